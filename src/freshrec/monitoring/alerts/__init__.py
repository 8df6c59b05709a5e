"""On-call alerts: Slack, PagerDuty and generic webhooks, deduplicated, rate limited, routed by severity.

* :mod:`.manager` — :class:`AlertManager`: one open alert per (model, alert), dedup, inhibition, resolve;
* :mod:`.receivers` — what each receiver kind is sent, secrets, delivery with retries;
* :mod:`.cli` — ``freshrec alerts``.

The public names load on first use, so importing the CLI for ``freshrec --help`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "AlertManager": "manager",
    "Alert": "receivers",
    "Delivery": "receivers",
    "SecretError": "receivers",
    "build_request": "receivers",
    "deliver": "receivers",
    "read_secret": "receivers",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
