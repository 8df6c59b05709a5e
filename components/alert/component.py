"""Alert: tell the on-call engineer what the drift check found (and resolve what cleared)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Output
from kfp.dsl.python_component import PythonComponent


def alert(
    workdir: str, settings_json: str, drift_result: Input[Artifact], deliveries: Output[Markdown]
) -> NamedTuple("AlertOutputs", [("open_alerts", int), ("failed_deliveries", int)]):
    """Sync the open alerts with the drift result at the configured receivers.

    Delivery failures are reported, not raised: an unreachable receiver must not stop the monitor, and the
    next run retries what was missed.

    Args:
        workdir: freshrec state directory (open alerts and rate limits persist under ``state/alerts``).
        settings_json: settings as JSON (merged over the defaults; ``alerts`` holds the receivers).
        drift_result: the drift check's JSON.
        deliveries: Markdown table of what was sent where.

    Returns:
        How many alerts are open after the sync, and how many deliveries failed.
    """
    import json
    from collections import namedtuple

    from freshrec.config import load_settings
    from freshrec.monitoring.alerts import AlertManager
    from freshrec.monitoring.drift import DriftResult
    from freshrec.monitoring.monitor import signals_from_drift

    settings = load_settings(None, **{**json.loads(settings_json or "{}"), "workdir": workdir})
    manager = AlertManager(settings.alerts, settings.state_dir)
    result = DriftResult.load(drift_result.path)
    sent = manager.sync(settings.model.name, signals_from_drift(result))
    still_open = manager.open_alerts()
    failed = [d for d in sent if not d.ok and not d.skipped]
    rows = ["| receiver | alert | action | ok | note |", "|---|---|---|---|---|"]
    rows += [f"| {d.receiver} | {d.key} | {d.action} | {d.ok} | {d.error or d.skipped or ''} |" for d in sent]
    with open(deliveries.path, "w") as f:
        f.write(
            "\n".join(
                [f"# Alerts: {len(still_open)} open", "", *[f"- {k}" for k in sorted(still_open)], "", *rows]
            )
            + "\n"
        )
    return namedtuple("AlertOutputs", ["open_alerts", "failed_deliveries"])(len(still_open), len(failed))


def component(image: str) -> PythonComponent:
    """The KFP component running :func:`alert` in ``image``."""
    return dsl.component(alert, base_image=image, install_kfp_package=False)
