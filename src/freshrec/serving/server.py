"""The local TF-Serving-compatible model server: REST + gRPC over a polled model repository.

Local mode only: the cluster runs the real ``tensorflow/serving`` image on the same layout and
config file. Usage::

    with ModelServer(settings) as server:
        requests.post(f"http://127.0.0.1:{server.rest_port}/v1/models/ctr:predict", json=...)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from freshrec.config import Settings
from freshrec.serving.httpbase import HttpService
from freshrec.serving.loader import ModelManager
from freshrec.serving.metrics import ServerMetrics

log = logging.getLogger(__name__)


class ModelServer:
    """TF Serving's REST (``serving.rest_port``) and gRPC (``serving.grpc_port``) APIs on loopback.

    Ports of 0 pick free ports; ``rest_port``/``grpc_port`` tell the bound ones after :meth:`start`.
    The first poll of the repository happens in :meth:`start` (so a started server serves what is on
    disk); later polls every ``serving.poll_interval_s``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        models_dir: Path | None = None,
        model_name: str | None = None,
        rest_port: int | None = None,
        grpc_port: int | None = None,
        grpc_workers: int = 16,
    ) -> None:
        cfg = settings.serving
        self.settings = settings
        self.host = cfg.host
        self.rest_port = cfg.rest_port if rest_port is None else rest_port
        self.grpc_port = cfg.grpc_port if grpc_port is None else grpc_port
        self.max_request_bytes = cfg.max_request_bytes
        self.max_batch_size = cfg.max_batch_size
        self.grpc_workers = grpc_workers
        self.metrics = ServerMetrics()
        self.manager = ModelManager(
            Path(models_dir or settings.models_dir), model_name or settings.model.name, cfg.poll_interval_s
        )
        self._http: HttpService | None = None
        self._grpc: Any = None

    def start(self) -> ModelServer:
        """Load what the repository holds, then listen on both ports and start polling."""
        from freshrec.serving.grpc_service import make_grpc_server
        from freshrec.serving.rest import RestApi

        self.manager.poll_once()
        rest = RestApi(self.manager, self.metrics, self.max_batch_size)
        self._http = HttpService(self.host, self.rest_port, rest, self.max_request_bytes, name="rest")
        self.rest_port = self._http.port
        try:
            self._grpc, self.grpc_port = make_grpc_server(
                self.manager,
                self.metrics,
                f"{self.host}:{self.grpc_port}",
                self.max_request_bytes,
                self.max_batch_size,
                self.grpc_workers,
            )
        except Exception:
            self._http.stop(0)
            raise
        self._grpc.start()
        self._http.start()
        self.manager.start()
        loaded = {n: sorted(v.servables) for n, v in self.manager.views().items()}
        log.info(
            "serving REST on %s:%d, gRPC on %s:%d; loaded %s",
            self.host,
            self.rest_port,
            self.host,
            self.grpc_port,
            loaded,
        )
        return self

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting requests, finish the ones in flight (up to ``grace_s``), stop polling."""
        if self._http is not None:
            self._http.stop(grace_s)
            self._http = None
        if self._grpc is not None:
            self._grpc.stop(grace_s).wait()
            self._grpc = None
        self.manager.stop()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"
