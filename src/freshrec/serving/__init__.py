"""Serving: a TF-Serving-compatible local model server, the ranking gateway and the prediction log.

Heavy modules load on first use: ``from freshrec.serving import ModelServer, Gateway`` works, but
importing ``freshrec.serving`` alone imports neither TensorFlow nor gRPC.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Gateway", "ModelServer"]


def __getattr__(name: str) -> Any:
    if name == "ModelServer":
        from freshrec.serving.server import ModelServer

        return ModelServer
    if name == "Gateway":
        from freshrec.serving.gateway import Gateway

        return Gateway
    raise AttributeError(name)
