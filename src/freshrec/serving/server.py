"""The local TF-Serving-compatible model server: REST + gRPC over a polled model repository.

The cluster runs the real ``tensorflow/serving`` image on the same layout and config file. Usage::

    with ModelServer(settings) as server:
        requests.post(f"http://127.0.0.1:{server.rest_port}/v1/models/ctr:predict", json=...)

:meth:`ModelServer.from_tfs_flags` builds the server from ``tensorflow_model_server``'s own flags
(:mod:`freshrec.serving.tfs_flags`) with the binary's meanings: all interfaces, a port of 0 disables that
API, the model config file read once or every ``--model_config_file_poll_wait_seconds``, base paths as
written, warmup records replayed (``--enable_model_warmup``), request batching (``--enable_batching``,
``--batching_parameters_file``), Prometheus metrics only where ``--monitoring_config_file`` enables them.
That is how the cluster rehearsal runs the rendered Rollout's container unchanged.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freshrec.config import Settings
from freshrec.serving.httpbase import HttpService
from freshrec.serving.loader import ModelManager
from freshrec.serving.metrics import ServerMetrics
from freshrec.serving.tfs_config import DEFAULT_PROMETHEUS_PATH as METRICS_PATH

if TYPE_CHECKING:
    from freshrec.serving.batching import BatchScheduler
    from freshrec.serving.tfs_flags import TfsFlags

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
        manager: ModelManager | None = None,
        host: str | None = None,
        metrics_path: str | None = METRICS_PATH,
        scheduler: BatchScheduler | None = None,
    ) -> None:
        cfg = settings.serving
        self.settings = settings
        self.host = cfg.host if host is None else host
        self.rest_port = cfg.rest_port if rest_port is None else rest_port
        self.grpc_port = cfg.grpc_port if grpc_port is None else grpc_port
        self.max_request_bytes = cfg.max_request_bytes
        self.max_batch_size = cfg.max_batch_size
        self.grpc_workers = grpc_workers
        self.metrics_path = metrics_path
        self.scheduler = scheduler
        self.metrics = ServerMetrics()
        self.manager = manager or ModelManager(
            Path(models_dir or settings.models_dir), model_name or settings.model.name, cfg.poll_interval_s
        )
        self._http: HttpService | None = None
        self._grpc: Any = None

    @classmethod
    def from_tfs_flags(cls, settings: Settings, flags: TfsFlags) -> ModelServer:
        """A server configured by ``tensorflow_model_server`` flags (see the module docstring).

        Raises:
            FlagError: the binary's start-up checks fail.
            ValueError: a batching parameters or monitoring config file is not a valid text proto.
        """
        from freshrec.serving.batching import BatchScheduler
        from freshrec.serving.loader import load_servable
        from freshrec.serving.tfs_config import batching_options, load_batching_file, prometheus_path

        flags.check()
        scheduler = None
        if flags.enable_batching:
            options = (
                load_batching_file(flags.batching_parameters_file)
                if flags.batching_parameters_file
                else batching_options()
            )
            scheduler = BatchScheduler(options)
        loader = functools.partial(
            load_servable,
            warmup=flags.enable_model_warmup,
            warmup_iterations=max(1, flags.num_request_iterations_for_warmup),
            synthetic_warmup=False,
            scheduler=scheduler,
        )
        config_file = Path(flags.model_config_file) if flags.model_config_file else None
        base = Path(flags.model_base_path).absolute() if flags.model_base_path else None
        manager = ModelManager(
            config_file.parent if config_file else (base.parent if base else Path.cwd()),
            flags.model_name,
            float(flags.file_system_poll_wait_seconds),
            loader,
            config_file=config_file,
            config_poll_s=float(flags.model_config_file_poll_wait_seconds),
            tf_semantics=True,
            scheduler=scheduler,
            default_base_path=base,
        )
        return cls(
            settings,
            rest_port=flags.rest_api_port,
            grpc_port=flags.port,
            grpc_workers=flags.grpc_max_threads or 16,
            manager=manager,
            host="0.0.0.0",  # the binary listens on all interfaces (a pod's IP)
            metrics_path=prometheus_path(flags.monitoring_config_file or None),
            scheduler=scheduler,
        )

    def start(self) -> ModelServer:
        """Load what the repository holds, then listen on both ports and start polling."""
        from freshrec.serving.grpc_service import make_grpc_server
        from freshrec.serving.rest import RestApi

        self.manager.poll_once()
        # A TF Serving port of 0 means "no such API" (ModelServer's own default ports are never 0 then).
        tfs = self.manager.tf_semantics
        if not (tfs and self.rest_port == 0):
            rest = RestApi(self.manager, self.metrics, self.max_batch_size, metrics_path=self.metrics_path)
            self._http = HttpService(self.host, self.rest_port, rest, self.max_request_bytes, name="rest")
            self.rest_port = self._http.port
        try:
            if not (tfs and self.grpc_port == 0):
                self._grpc, self.grpc_port = make_grpc_server(
                    self.manager,
                    self.metrics,
                    f"{self.host}:{self.grpc_port}",
                    self.max_request_bytes,
                    self.max_batch_size,
                    self.grpc_workers,
                )
        except Exception:
            if self._http is not None:
                self._http.stop(0)
            raise
        if self._grpc is not None:
            self._grpc.start()
        if self._http is not None:
            self._http.start()
        self.manager.start()
        loaded = {n: sorted(v.servables) for n, v in self.manager.views().items()}
        log.info(
            "serving REST on %s:%s, gRPC on %s:%s; loaded %s",
            self.host,
            self.rest_port if self._http else "-",
            self.host,
            self.grpc_port if self._grpc else "-",
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
        if self.scheduler is not None:
            self.scheduler.stop()

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
