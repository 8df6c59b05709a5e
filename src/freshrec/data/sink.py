"""The event sink: the cluster's event stream (Redis Streams) appended to the event log.

In the cluster, events reach freshrec on a stream (the online learner's source). The pipeline's ingest,
the canary analysis Job (clicks to join with the prediction log) and the drift monitor read the **event
log** on the data claim, so one consumer group of the same stream validates each entry and appends it
there: accepted rows to the log (which drops event ids it already holds, so a redelivery after a crash
adds nothing), rejected ones to the quarantine with their reasons. Entries are acknowledged only after
both are written.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class SinkTotals:
    received: int = 0
    appended: int = 0
    duplicates: int = 0
    quarantined: int = 0


def sink_stream(
    settings: Any,
    source: Any,
    *,
    should_stop: Callable[[], bool],
    batch_size: int = 1000,
    idle_timeout_s: float = 2.0,
    on_batch: Callable[[SinkTotals], None] | None = None,
) -> SinkTotals:
    """Append what ``source`` delivers to ``settings.eventlog_dir`` until ``should_stop()``.

    Args:
        settings: the settings (event log, quarantine, future tolerance).
        source: an event source with ``poll(n, timeout_s)`` and ``commit(positions)``
            (:class:`freshrec.online.sources.RedisStreamSource`).
        should_stop: asked before every poll.
        batch_size: entries per poll.
        idle_timeout_s: how long one poll waits for entries.
        on_batch: called with the running totals after each batch.
    """
    from freshrec.data.eventlog import EventLog
    from freshrec.data.validation import validate_events, write_quarantine

    events = EventLog(settings.eventlog_dir)
    totals = SinkTotals()
    while not should_stop():
        batch = source.poll(batch_size, idle_timeout_s)
        if len(batch.events) == 0 and not batch.positions:
            continue
        if len(batch.events):
            result = validate_events(
                batch.events, future_tolerance_s=settings.data.future_tolerance_s, source="stream"
            )
            if len(result.quarantined):
                write_quarantine(
                    result.quarantined,
                    settings.quarantine_dir,
                    source="stream",
                    name=f"stream-{uuid.uuid4().hex}",
                )
                log.warning("quarantined %d stream events: %s", len(result.quarantined), result.reasons)
            appended = events.append(result.accepted) if len(result.accepted) else None
            totals.received += len(batch.events)
            totals.quarantined += len(result.quarantined)
            if appended is not None:
                totals.appended += appended.written
                totals.duplicates += appended.received - appended.written
        source.commit(batch.positions)
        if on_batch is not None:
            on_batch(totals)
    return totals
