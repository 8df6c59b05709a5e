"""The cluster layout: one typed description of a freshrec deployment.

Everything that two ends of the cluster must agree on is decided here once:

- the **namespace** every workload and every pipeline run lives in (PVCs are per namespace, so the KFP run
  must run where the claims are);
- the **claims** (PersistentVolumeClaims) and, for every **artefact** (event log, feature tables, model
  repository, prediction log, drift reference profiles, reports, state ...), the claim and the ``subPath``
  that hold it. In every freshrec pod an artefact is mounted at ``<workdir>/<artefact>``, which is exactly
  where :class:`~freshrec.config.Settings` looks for it (``settings.eventlog_dir`` is ``workdir/eventlog``),
  so the writer's and the reader's settings cannot disagree;
- the **services** (names and ports) the workloads call each other by;
- the **service accounts** of each identity, and the **images**.

From this object follow the pipeline's kfp-kubernetes mounts (:mod:`freshrec.pipelines.common`), the
environment every workload's settings are read from (:meth:`ClusterLayout.settings_env`), and the base
manifests (:mod:`freshrec.cluster.render`, checked in under ``manifests/base`` and compared in the tests).
It is part of the settings (``settings.cluster``, env ``FRESHREC_CLUSTER__...``) so one file or one set of
variables changes it everywhere.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Artefacts of the data claim, by the name Settings gives their folder under the workdir.
ArtefactName = Literal[
    "eventlog", "quarantine", "tables", "models", "predictions", "references", "reports", "state"
]
ARTEFACTS: tuple[str, ...] = (
    "eventlog",
    "quarantine",
    "tables",
    "models",
    "predictions",
    "references",
    "reports",
    "state",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Claim(_Strict):
    """A PersistentVolumeClaim of the deployment."""

    name: str
    size: str
    access_modes: list[str] = Field(default_factory=lambda: ["ReadWriteMany"])
    storage_class: str | None = None


class Artefact(_Strict):
    """Where one artefact lives: a claim (key of :attr:`ClusterLayout.claims`) and a path inside it."""

    claim: str
    sub_path: str
    description: str = ""


class Mount(_Strict):
    """One volume mount of an artefact into a pod."""

    artefact: str
    claim: str
    sub_path: str
    mount_path: str
    read_only: bool = False


class Service(_Strict):
    """A Service the workloads call: name, port and (for services outside the layout) namespace."""

    name: str
    port: int
    namespace: str | None = None  # None: the layout's namespace (short name, resolves inside it)

    def host(self) -> str:
        """The DNS name a pod of the layout's namespace uses (short name inside it)."""
        return self.name if self.namespace is None else f"{self.name}.{self.namespace}.svc"

    def address(self) -> str:
        return f"{self.host()}:{self.port}"

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://{self.address()}"


def _default_claims() -> dict[str, Claim]:
    return {
        "data": Claim(name="freshrec-data", size="50Gi"),
        "models": Claim(name="freshrec-models", size="20Gi"),
    }


def _default_artefacts() -> dict[str, Artefact]:
    return {
        "eventlog": Artefact(claim="data", sub_path="eventlog", description="validated events (Parquet)"),
        "quarantine": Artefact(
            claim="data", sub_path="quarantine", description="rejected rows, with reasons"
        ),
        "tables": Artefact(claim="data", sub_path="tables", description="profile and activity tables"),
        "models": Artefact(claim="models", sub_path="", description="model repository + models.config"),
        "predictions": Artefact(
            claim="data", sub_path="predictions", description="the gateway's prediction log"
        ),
        "references": Artefact(
            claim="data", sub_path="references", description="drift reference profile per pushed version"
        ),
        "reports": Artefact(claim="data", sub_path="reports", description="drift, rollout and run reports"),
        "state": Artefact(
            claim="data", sub_path="state", description="checkpoints, trigger and monitor state"
        ),
    }


class Services(_Strict):
    """Service names and ports (TF Serving's are TF Serving's defaults)."""

    # TF Serving: `serving` selects every serving pod (the mesh route splits it by weight between stable and
    # canary, which Argo Rollouts sets); stable/canary are the Rollout's own services.
    serving: str = "ctr-serving"
    serving_stable: str = "ctr-serving-stable"
    serving_canary: str = "ctr-serving-canary"
    serving_grpc_port: int = 8500
    serving_rest_port: int = 8501
    gateway: Service = Field(default_factory=lambda: Service(name="ranking-gateway", port=8080))
    gateway_admin_port: int = 8081
    # The stream feature job's Prometheus metrics (what its ServiceMonitor scrapes).
    stream_features: Service = Field(
        default_factory=lambda: Service(name="freshrec-stream-features", port=9108)
    )
    redis: Service = Field(default_factory=lambda: Service(name="freshrec-redis", port=6379))
    postgres: Service = Field(default_factory=lambda: Service(name="freshrec-postgres", port=5432))
    # Outside the layout (the cluster's platform): Prometheus, its Pushgateway, the KFP API.
    prometheus: Service = Field(
        default_factory=lambda: Service(name="prometheus-operated", port=9090, namespace="monitoring")
    )
    pushgateway: Service = Field(
        default_factory=lambda: Service(name="prometheus-pushgateway", port=9091, namespace="monitoring")
    )
    kfp_api: Service = Field(
        default_factory=lambda: Service(name="ml-pipeline", port=8888, namespace="kubeflow")
    )


class ServiceAccounts(_Strict):
    """One identity per kind of workload; only ``pipeline`` and ``drift`` call an API."""

    pipeline: str = "freshrec-pipeline"  # every KFP task pod of a run (kfp has no per-task account)
    serving: str = "ctr-serving"
    analysis: str = "freshrec-analysis"
    drift: str = "freshrec-drift"  # the drift CronJob: starts retraining runs through the KFP API
    workloads: str = "freshrec-workload"  # gateway, online learner, Feast jobs, stream job: no API calls


class Images(_Strict):
    """Container images (kustomize ``images:`` in an overlay rewrites them all, by name)."""

    component: str = "ghcr.io/freshrec/freshrec:0.1.0"
    component_gpu: str = "ghcr.io/freshrec/freshrec-cuda:0.1.0"
    tfserving: str = "tensorflow/serving:2.21.0"
    tfserving_gpu: str = "tensorflow/serving:2.21.0-gpu"
    redis: str = "redis:7.4.1-alpine"
    postgres: str = "postgres:16.6-bookworm"


class ClusterLayout(_Strict):
    """The deployment: namespace, claims, artefacts, services, service accounts, images."""

    namespace: str = "freshrec"
    # Where every freshrec pod (workloads and pipeline tasks) finds its artefacts: <workdir>/<artefact>.
    workdir: str = "/var/lib/freshrec"
    # Where TF Serving mounts the model repository (read-only); base_path = <serving_models_mount>/<model>.
    serving_models_mount: str = "/models"
    # Uid/gid the freshrec image runs as (docker/Dockerfile); pods set fsGroup to it so claims are writable.
    uid: int = 1000
    claims: dict[str, Claim] = Field(default_factory=_default_claims)
    artefacts: dict[str, Artefact] = Field(default_factory=_default_artefacts)
    services: Services = Field(default_factory=Services)
    service_accounts: ServiceAccounts = Field(default_factory=ServiceAccounts)
    images: Images = Field(default_factory=Images)
    # Secret holding the PostgreSQL password (key `password`), created by the overlay or the operator.
    postgres_secret: str = "freshrec-postgres"
    postgres_user: str = "freshrec"
    postgres_database: str = "feast"
    # The Rollout of TF Serving (its name is also what the deployer Role may touch).
    rollout_name: str = "ctr-serving"
    settings_configmap: str = "freshrec-settings"

    @model_validator(mode="after")
    def _consistent(self) -> ClusterLayout:
        missing = sorted(set(ARTEFACTS) - set(self.artefacts))
        if missing:
            raise ValueError(f"cluster layout: artefact(s) {missing} have no claim")
        for name, art in self.artefacts.items():
            if art.claim not in self.claims:
                raise ValueError(
                    f"cluster layout: artefact {name!r} is on claim {art.claim!r}, "
                    f"which is not one of {sorted(self.claims)}"
                )
            if art.sub_path.startswith("/") or ".." in art.sub_path.split("/"):
                raise ValueError(
                    f"cluster layout: artefact {name!r} sub_path {art.sub_path!r} must be relative"
                )
        for path in (self.workdir, self.serving_models_mount):
            if not path.startswith("/"):
                raise ValueError(f"cluster layout: mount path {path!r} must be absolute")
        return self

    # --- artefacts ------------------------------------------------------------------------------------
    def artefact_path(self, name: str) -> str:
        """Where artefact ``name`` is in a freshrec pod (what ``Settings`` derives from the workdir)."""
        self._check(name)
        return f"{self.workdir.rstrip('/')}/{name}"

    def claim_of(self, name: str) -> tuple[str, str]:
        """(PVC name, subPath) that hold artefact ``name``."""
        self._check(name)
        art = self.artefacts[name]
        return self.claims[art.claim].name, art.sub_path

    def mounts(self, names: list[str] | tuple[str, ...], read_only: tuple[str, ...] = ()) -> list[Mount]:
        """Mounts of these artefacts at their workdir paths (``read_only`` ones read-only)."""
        out = []
        for name in names:
            claim, sub = self.claim_of(name)
            out.append(
                Mount(
                    artefact=name,
                    claim=claim,
                    sub_path=sub,
                    mount_path=self.artefact_path(name),
                    read_only=name in read_only,
                )
            )
        return out

    def serving_mount(self) -> Mount:
        """TF Serving's read-only mount of the model repository."""
        claim, sub = self.claim_of("models")
        return Mount(
            artefact="models", claim=claim, sub_path=sub, mount_path=self.serving_models_mount, read_only=True
        )

    def serving_base_path(self, model: str) -> str:
        """``base_path`` of ``model`` in TF Serving's model config, as the serving pods see the repository."""
        return f"{self.serving_models_mount.rstrip('/')}/{model}"

    def _check(self, name: str) -> None:
        if name not in self.artefacts:
            raise KeyError(f"unknown artefact {name!r}; the layout has {sorted(self.artefacts)}")

    # --- what the workloads' settings follow --------------------------------------------------------
    def settings_env(self) -> dict[str, str]:
        """``FRESHREC_*`` variables every freshrec pod of the layout gets (the ``freshrec-settings`` ConfigMap).

        The PostgreSQL password is not here: pods get it as ``PGPASSWORD`` from :attr:`postgres_secret`
        (libpq reads it), so the URL below carries none.
        """
        s = self.services
        pg = s.postgres
        return {
            "FRESHREC_ENVIRONMENT": "cluster",
            "FRESHREC_WORKDIR": self.workdir,
            "FRESHREC_FEATURES__ENVIRONMENT": "redis",
            "FRESHREC_FEATURES__REDIS_CONNECTION": s.redis.address(),
            "FRESHREC_FEATURES__POSTGRES_URL": (
                f"postgresql+psycopg://{self.postgres_user}@{pg.address()}/{self.postgres_database}"
            ),
            "FRESHREC_ONLINE__SOURCE": "redis",
            "FRESHREC_ONLINE__REDIS_URL": f"redis://{s.redis.address()}/0",
            "FRESHREC_ROLLOUT__NAMESPACE": self.namespace,
            "FRESHREC_ROLLOUT__ROLLOUT_NAME": self.rollout_name,
            "FRESHREC_PIPELINE__NAMESPACE": self.namespace,
            "FRESHREC_PIPELINE__HOST": s.kfp_api.url(),
            "FRESHREC_PIPELINE__SERVICE_ACCOUNT": self.service_accounts.pipeline,
            "FRESHREC_DRIFT__PUSHGATEWAY_URL": s.pushgateway.url(),
        }

    def external_secrets(self) -> dict[str, list[str]]:
        """Secrets the workloads need that an overlay may leave to the operator (name -> keys).

        The local and gpu overlays generate them with development values; production expects them
        created beforehand (``kubectl create secret generic ...``, or a secret manager).
        """
        return {self.postgres_secret: ["password"]}

    def serving_url(self, service: str | None = None) -> str:
        """TF Serving's REST URL through ``service`` (default: the stable Service)."""
        return f"http://{service or self.services.serving_stable}:{self.services.serving_rest_port}"

    def model_server_target(self) -> str:
        """The gRPC target the ranking gateway predicts through (the mesh splits it stable/canary)."""
        return f"{self.services.serving}:{self.services.serving_grpc_port}"
