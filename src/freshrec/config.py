"""One typed settings object for freshrec.

Entry points (the CLI, KFP components, benchmarks) call :func:`load_settings` once and pass the
object (or the section they need) down. Nothing here reads the environment or touches the disk at
import time.

Values come from, in increasing priority: the defaults below, an optional YAML file
(``--config`` / ``FRESHREC_CONFIG``), and environment variables ``FRESHREC_<SECTION>__<FIELD>``
(for example ``FRESHREC_SERVING__REST_PORT=9501``). Secrets are never given defaults here; alert
receivers name the environment variable that holds them.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from freshrec.cluster.layout import ClusterLayout


class DataSettings(BaseModel):
    """Where raw datasets live and which one the local loop uses."""

    datasets_dir: Path = Path("../shared/datasets")
    dataset: str = "movielens-100k"
    future_tolerance_s: float = 300.0
    # longest event/user/item id accepted (longer: quarantined as <column>_too_long)
    max_id_chars: int = Field(default=512, ge=1)
    # events before this are quarantined (timestamp_before_min): a stray small number is not a 1970 event
    min_event_time: datetime = datetime(1990, 1, 1, tzinfo=UTC)
    train_fraction: float = 0.8
    valid_fraction: float = 0.1
    # `data prepare` fails (writing nothing to the event log) when more than this share of a dataset's
    # rows is quarantined, or every row is
    max_quarantine_share: float = Field(default=0.1, ge=0.0, le=1.0)


class StreamFeatureSettings(BaseModel):
    """The stream feature job (``freshrec features stream``, :mod:`freshrec.features.stream`)."""

    # micro-batches: at most this many events, written at most max_batch_s after the first one arrived
    max_batch_events: int = Field(default=10_000, ge=1)
    max_batch_s: float = Field(default=0.2, ge=0.0)
    idle_poll_s: float = Field(default=0.5, ge=0.0)
    # positions are committed only with a checkpoint (state + seen ids), at most this often
    checkpoint_every_s: float = Field(default=1.0, ge=0.0)
    report_every_s: float = Field(default=10.0, gt=0.0)
    metrics_textfile: bool = True
    seen_ids_capacity: int = 1_000_000
    future_tolerance_s: float = 300.0
    # Redis Streams: the job's own consumer group (the learner has its own), same stream as online.stream
    group: str = "freshrec-features"
    consumer: str = "features-1"


class FeatureSettings(BaseModel):
    """Feast repository and online store."""

    repo_dir: Path = Path("feature_repo")
    # "local" (SQLite online + file offline), "redis" (Redis online + PostgreSQL registry)
    environment: Literal["local", "redis"] = "local"
    redis_connection: str = "localhost:6379"
    postgres_url: str = "postgresql+psycopg://postgres@localhost:5432/postgres"
    feature_service: str = "ranking_v1"
    ttl_days: int = 3650
    # Feast project name: Redis keys and SQL-registry rows are namespaced by it
    project: str = "freshrec"
    # How the pipelines build the point-in-time training set: "feast" (get_historical_features against the
    # offline store: the path for BigQuery/Snowflake/Spark offline stores) or "pandas" (the same
    # strictly-earlier join computed from the event log and profile tables in-process; a parity test keeps
    # the two equal). Feast's file offline store needs ~100x the time on MovieLens, so local runs use pandas.
    training_set_engine: Literal["feast", "pandas"] = "pandas"
    stream: StreamFeatureSettings = Field(default_factory=StreamFeatureSettings)


class ModelSettings(BaseModel):
    """Model architecture and its repository."""

    name: str = "ctr"
    architecture: Literal["dcn", "lr"] = "dcn"
    embedding_dim: int = 16
    id_hash_buckets: int = 50_000
    cross_layers: int = 2
    deep_units: list[int] = Field(default_factory=lambda: [128, 64])
    dropout: float = 0.1
    cross_rank: int | None = None  # None: full-rank cross layers; an int: low-rank W = U V
    embedding_l2: float = 1e-6
    id_embedding_l2: float = 1e-6
    dense_l2: float = 0.0
    numeric_embeddings: bool = False  # DCN: also embed each standardised numeric by its z-bucket
    deep_batch_norm: bool = False  # DCN: batch norm before each deep layer's ReLU


class FeedbackSettings(BaseModel):
    """Error feedback in retraining (``training.feedback``): rows the served model scored badly count more.

    A training row whose impression is in the prediction log (joined with its click within
    ``click_window_s``, :func:`freshrec.serving.predlog.join_clicks`) has a served logloss ``l``; its ratio
    to the mean served logloss of the joined rows, capped to ``[1 / max_weight, max_weight]``, is its
    sample weight (``weight``), or ``floor(weight) - 1`` extra copies of it join the training set
    (``augment``, at most ``max_weight - 1``). Rows without a logged prediction keep weight 1
    (:mod:`freshrec.training.feedback`).
    """

    # Off: benchmarks/bench_feedback.py measures no gain beyond its seed-to-seed spread (on the MovieLens
    # replays both modes lose window AUC against a plain retrain; see benchmarks/results.md).
    mode: Literal["off", "weight", "augment"] = "off"
    # The cap: no row counts more than this many times an average one (nor less than its inverse).
    max_weight: float = Field(default=3.0, ge=1.0)
    # How long after a prediction its click may arrive; None: ``rollout.click_window_s``.
    click_window_s: float | None = Field(default=None, ge=0.0)


class TrainingSettings(BaseModel):
    """Batch training."""

    batch_size: int = 512
    # A cap, not the usual stop: early stopping (patience epochs without a better validation AUC, or
    # logloss when a window has one class; best weights restored) ends a run first.
    epochs: int = 30
    learning_rate: float = 1e-3
    early_stopping_patience: int = 2
    # Learning rate x lr_reduce_factor after lr_reduce_patience epochs without improvement (1.0: off).
    lr_reduce_factor: float = Field(default=0.5, gt=0, le=1)
    lr_reduce_patience: int = Field(default=1, ge=0)
    min_learning_rate: float = Field(default=1e-5, ge=0)
    seed: int = 42
    mixed_precision: bool = False
    warm_start: bool = True
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)


class BlessingSettings(BaseModel):
    """Declarative blessing policy: absolute floors and allowed change against production."""

    min_auc: float = 0.60
    max_logloss: float = 0.70
    max_auc_drop: float = 0.005
    max_logloss_increase: float = 0.01
    max_calibration_error: float = 0.10


class ServingSettings(BaseModel):
    """The TF-Serving-compatible local server and the ranking gateway."""

    host: str = "127.0.0.1"
    rest_port: int = 8501
    grpc_port: int = 8500
    gateway_port: int = 8080
    # The gateway's admin API (canary weight, per-arm stats) listens apart from the ranking port. A
    # non-loopback admin host needs a token: the gateway refuses to start without one.
    gateway_admin_host: str = "127.0.0.1"
    gateway_admin_port: int = 8081
    # Where the admin bearer token comes from: this environment variable, else this file (a mounted Secret).
    admin_token_env: str = "FRESHREC_ADMIN_TOKEN"
    admin_token_file: Path | None = None
    # Threads of the gateway's blocking work (feature lookup + model call); requests beyond them queue.
    gateway_threads: int = 8
    # `as_of` (replayed impression time) is accepted only in replay mode, and never before this time.
    gateway_replay: bool = False
    as_of_earliest: str = "1990-01-01T00:00:00Z"
    max_id_length: int = 256
    poll_interval_s: float = 1.0
    max_batch_size: int = 1000
    max_request_bytes: int = 4 * 1024 * 1024
    # Bounds per HTTP listener (model server REST and gateway): headers, open connections (one thread
    # each on the model server), the total time to read one request, and keep-alive idle time.
    max_header_bytes: int = 64 * 1024
    max_connections: int = 256
    request_timeout_s: float = 30.0
    idle_timeout_s: float = 60.0

    def admin_token(self) -> str | None:
        """The gateway's admin bearer token (``admin_token_env``, else ``admin_token_file``), or None.

        Raises:
            ValueError: ``admin_token_file`` is set but cannot be read or is empty.
        """
        token = os.environ.get(self.admin_token_env, "").strip()
        if token:
            return token
        if self.admin_token_file is None:
            return None
        try:
            token = Path(self.admin_token_file).read_text().strip()
        except OSError as exc:
            raise ValueError(f"serving.admin_token_file: cannot read {self.admin_token_file}: {exc}") from exc
        if not token:
            raise ValueError(f"serving.admin_token_file: {self.admin_token_file} is empty")
        return token


class RolloutSettings(BaseModel):
    """Canary plan and analysis thresholds."""

    plan_file: Path | None = None
    max_error_rate: float = 0.01
    max_p99_latency_ms: float = 100.0
    max_logloss_increase: float = 0.02
    min_clicks: int = 50
    # Fewer canary requests than this cannot show the error rate is under max_error_rate.
    min_requests: int = 100
    # Relative CTR drop (canary vs stable) that fails when it is also statistically significant.
    max_ctr_drop: float = 0.10
    # Kolmogorov-Smirnov distance between the arms' score distributions beyond which a canary is broken.
    max_score_ks: float = 0.30
    min_predictions: int = 50
    # One-sided significance level of the logloss, CTR and score-shift tests.
    alpha: float = 0.05
    click_window_s: float = 3600.0
    # How long the local controller keeps re-analysing an inconclusive step, and what it does then.
    max_inconclusive_wait_s: float = 1800.0
    analysis_interval_s: float = 30.0
    on_inconclusive: Literal["rollback", "promote"] = "rollback"
    # None: the cluster layout's namespace and Rollout name (settings.cluster).
    namespace: str | None = None
    rollout_name: str | None = None


class DriftSettings(BaseModel):
    """Drift and data-quality checks."""

    drift_share_threshold: float = 0.5
    # Methods are Evidently stat-test names; wasserstein, jensenshannon and psi run on full data in numpy,
    # any other name is computed by Evidently itself.
    numeric_method: str = "wasserstein"
    categorical_method: str = "jensenshannon"
    numeric_threshold: float = 0.1
    categorical_threshold: float = 0.1
    column_methods: dict[str, str] = Field(default_factory=dict)
    column_thresholds: dict[str, float] = Field(default_factory=dict)
    # As Evidently's default preset: numeric columns with this few distinct values compare as categories.
    numeric_as_categorical_max_unique: int = 5
    # Rows of each window given to Evidently for the HTML report (verdicts use all rows).
    max_sample_rows: int = 10_000
    seed: int = 0
    min_rows: int = 100
    max_missing_share: float = 0.05
    max_unseen_category_share: float = 0.5
    out_of_range_margin: float = 0.1
    max_out_of_range_share: float = 0.01
    # Activity counters grow with time and come in bursts: they leave the reference range by design.
    out_of_range_exempt: list[str] = Field(default_factory=lambda: ["*_events_*", "*_hours_since_last"])
    # Hashed high-cardinality categories (new users bring new zip codes): unseen values are expected, the
    # model hashes them into their own buckets; their drift is still measured.
    unseen_category_exempt: list[str] = Field(default_factory=lambda: ["*_zip_prefix"])
    score_column: str | None = "score"
    target_column: str | None = "label"
    prediction_method: str = "wasserstein"
    prediction_threshold: float = 0.1
    # Prediction drift counts by how far it moves the expected logloss (nats) of calibrated scores.
    prediction_logloss_threshold: float = 0.02
    # Counters since the start of the stream grow by construction: compared per hour of history when the
    # check is given the stream's first event (growth_origin).
    growth_columns: list[str] = Field(default_factory=lambda: ["*_events_total"])
    # A feature constant in the current window that varied in the reference is a broken producer.
    constant_exempt: list[str] = Field(default_factory=list)
    # Column prefixes of each entity: several of its features missing on the same rows is a broken join.
    entity_prefixes: dict[str, str] = Field(default_factory=lambda: {"user": "user_", "item": "item_"})
    target_rate_threshold: float = 0.05
    skew_atol: float = 1e-4
    skew_rtol: float = 1e-3
    max_skew_share: float = 0.01
    # Never compared for drift when no columns are named (identifiers, times).
    ignore_columns: list[str] = Field(
        default_factory=lambda: [
            "event_id",
            "event_timestamp",
            "user_id",
            "item_id",
            "request_id",
            "served_at",
            "rating",
        ]
    )
    # Metrics of the last check: node-exporter textfile (default <state_dir>/metrics/) and/or Pushgateway.
    metrics_textfile: Path | None = None
    pushgateway_url: str | None = None


class AlertReceiver(BaseModel):
    """One alert destination. The secret is read from ``secret_env`` or ``secret_file`` at send time.

    The secret is the webhook URL (slack, webhook: when ``url`` is not set), the routing key (pagerduty),
    or an optional bearer token (webhook with ``url``). ``secret_file`` is a mounted Kubernetes secret key
    (e.g. ``/etc/freshrec/alerts/slack-url``). A receiver that carries a secret must use an ``https://``
    URL; redirects are never followed. There is no Alertmanager receiver: in a cluster the alerts reach
    Alertmanager through the PrometheusRules (``manifests/base/monitoring``), from the monitor's metrics.
    """

    kind: Literal["slack", "pagerduty", "webhook"]
    name: str | None = None  # defaults to the kind; used in logs and `freshrec alerts test --receiver`
    url: str | None = None
    secret_env: str | None = None
    secret_file: Path | None = None
    # CA bundle that signs the receiver's TLS certificate (a private CA); default: the system's.
    ca_file: Path | None = None
    # The least severe alert this receiver gets: "critical" (pages only), "warning" (and tickets) or
    # "info" (and notices of what the loop did by itself).
    min_severity: Literal["critical", "warning", "info"] = "warning"

    @model_validator(mode="before")
    @classmethod
    def _no_alertmanager(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == "alertmanager":
            raise ValueError(
                "alerts.receivers: kind 'alertmanager' was removed: in a cluster, freshrec exports the "
                "monitor's alerts as metrics and the PrometheusRules in manifests/base/monitoring route "
                "them to Alertmanager (posting them as well would page twice under two names)"
            )
        return data


class AlertSettings(BaseModel):
    receivers: list[AlertReceiver] = Field(default_factory=list)
    timeout_s: float = 5.0
    max_retries: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    # No second notification for the same (model, alert) within this many seconds (flapping).
    min_interval_s: float = 60.0
    # At most this many firing notifications per receiver per hour (resolves always go out).
    max_per_hour: int = 30
    # Where docs/runbooks/<alert>.md is published (the PrometheusRules' runbook_url use the same base).
    runbook_base_url: str = "https://github.com/freshrec/freshrec/blob/main/docs/runbooks"
    console: bool = True


class MonitorSettings(BaseModel):
    """What pages, what is a notice: the thresholds of the monitor (see freshrec.monitoring.catalogue)."""

    # Drift thresholds are calibrated on earlier windows of the stream so that a window like those crosses
    # them with this probability (per window); at least calibration_min_windows such windows are needed.
    false_alarm_rate: float = 0.01
    calibration_windows: int = 20
    calibration_min_windows: int = 4
    # Served quality over delayed labels, against the previous windows (see freshrec.monitoring.served).
    served_baseline_windows: int = 3
    min_labels: int = 200
    # Label-joined logloss past the baseline by this much (significant at alpha) is a degradation: a
    # ticket and a retraining reason; by page_logloss_increase a jump: a page.
    max_logloss_increase: float = 0.05
    page_logloss_increase: float = 0.15
    ctr_collapse_ratio: float = 0.5
    alpha: float = 0.001
    # The label-free estimate (CBPE) may run this far above the served baseline before it opens a ticket.
    estimate_max_logloss_increase: float = 0.10
    estimate_min_rows: int = 500
    estimate_max_rows: int = 20_000
    # Freshness SLOs: how far (event time) a component may trail the newest event of the stream.
    stream_features_slo_s: float = 900.0
    online_learner_slo_s: float = 900.0
    # How long after a publish the server may still answer with the previous version.
    serving_publish_grace_s: float = 60.0
    guard_failures_to_page: int = 3


class TriggerSettings(BaseModel):
    """When drift, quality or a schedule starts retraining."""

    cooldown_s: float = 3600.0
    on_drift: bool = True
    # Retraining on data that fails its quality checks learns the breakage; the monitor pages instead.
    on_quality_failure: bool = False
    online_logloss_increase: float = 0.05
    schedule_s: float | None = None


class ScreeningSettings(BaseModel):
    """Anomaly screening of each micro-batch before the online learner learns it (``online.screening``)."""

    # Measured (benchmarks/bench_update_loop.py, 3 seeds): 0 of 588 clean MovieLens batches held, 123 of 123
    # injected ones, +10.8 pt online AUC on the poisoned stream. Still off by default: a held batch waits
    # for an operator (``freshrec online release|drop``), and the loop's tests stream flips at the guard.
    enabled: bool = False
    reference_batches: int = Field(50, ge=1)  # the recent learned batches a batch is compared with
    min_reference_batches: int = Field(5, ge=1)  # before this many, only the absolute tests apply
    min_batch_events: int = Field(50, ge=1)  # smaller batches: only the absolute tests (too noisy)
    # Hold when a statistic is further than this many robust sd (1.4826 MAD) from the reference median.
    max_robust_z: float = Field(6.0, gt=0)
    # Per-test overrides of max_robust_z. score_shift: on MovieLens a batch rated by one person the model
    # knows to dislike most films sits 7.5 robust sd below the reference's mean score (clean replay), so the
    # score test only catches gross shifts (a broken feature pushing every score to one end).
    max_robust_z_by_test: dict[str, float] = Field(default_factory=lambda: {"score_shift": 10.0})
    # label_drift: a one-sided CUSUM of the label disagreement d (the serving AUC's robust-z deficit plus
    # the serving logloss's robust-z excess, over sqrt 2), S = clip(S + d - allowance, 0, cap); the batch is
    # held while S > limit (replay: clean batches reach 2.9, a flip's first batch 6.5 to 7.7). A label flip from a point on moves every batch a little
    # (single batches of it overlap clean ones: 0.58 vs a clean minimum of 0.50), the CUSUM adds it up.
    drift_allowance: float = Field(1.5, ge=0)
    drift_limit: float = Field(4.5, gt=0)
    drift_cap: float = Field(8.0, gt=0)  # how much evidence is kept: bounds the clean batches to recover
    # entity_tail_clicks: per user with >= min_entity_events in the batch, the binomial tail probability of
    # its clicks on long-tail items (popularity_feature at most the reference's tail_quantile) at the
    # reference's rate of such clicks; held below 10**-max_entity_log10_p. A bot clicking every item clicks
    # the catalogue's tail, which people rarely click; click *rate* alone does not tell it from a person on
    # MovieLens (a person clicks 128 of 132 in one batch, 187 of 190 in another).
    popularity_feature: str = "item_events_total"
    tail_quantile: float = Field(0.1, gt=0, lt=1)
    min_entity_events: int = Field(20, ge=1)
    max_entity_log10_p: float = Field(15.0, gt=0)
    tail_samples_per_batch: int = Field(64, ge=1)  # (popularity, label) pairs kept per reference batch
    # Floors on the robust sd, per statistic (a reference of near-equal batches must not hold every batch).
    min_scale: dict[str, float] = Field(
        default_factory=lambda: {
            "label_rate": 0.03,
            "mean_score": 0.02,
            "serving_logloss": 0.03,
            "serving_auc": 0.03,
            "entity_share": 0.03,
        }
    )
    max_duplicate_share: float = Field(0.05, ge=0, le=1)
    recent_keys: int = Field(5000, ge=0)  # recent (user, item, time) keys remembered for the duplicate test
    range_margin: float = Field(0.5, ge=0)  # the reference range is widened by this share of its width
    max_out_of_range_share: float = Field(0.2, ge=0, le=1)


class OnlineSettings(BaseModel):
    """The streaming learner."""

    source: Literal["eventlog", "redis"] = "eventlog"
    redis_url: str = "redis://localhost:6379/0"
    stream: str = "freshrec:events"
    group: str = "freshrec-online"
    # micro_batch: events per poll / featurization / checkpoint; train_batch: test-then-train granularity
    # inside it (each slice is scored, then learned, before the next is scored: a new user's embedding
    # learns from their previous events of the same micro-batch).
    micro_batch: int = 256
    train_batch: int = 8
    # Two optimizers over disjoint variables (as in Monolith): the dense layers learn slowly with Adam at
    # learning_rate; the embedding tables (rows of ids, genres, buckets: each row sees few events, a new
    # id's row none before it appears) with their own optimizer at a much larger embedding_learning_rate.
    learning_rate: float = 2e-4
    embedding_optimizer: Literal["adagrad", "adam", "sgd"] = "adagrad"
    embedding_learning_rate: float = 0.2
    export_every_events: int = 5000
    export_every_s: float = 60.0
    label_delay_s: float = 0.0
    guard_max_logloss_increase: float = 0.02
    guard_prediction_mean_bounds: tuple[float, float] = (0.02, 0.98)
    reset_on_guard_failure: bool = True
    # A learner whose recent prequential AUC is below this floor has learned corrupted labels.
    guard_min_auc: float = 0.5
    guard_max_reference_logloss_increase: float = 0.05
    guard_min_events: int = 200
    guard_reference_size: int = 2000
    prequential_window: int = 5000
    consumer: str = "learner-1"
    # Pending entries of a dead consumer idle this long are claimed by a live one (XAUTOCLAIM), in a sweep
    # repeated every claim_interval_s while running (not only at start-up).
    claim_min_idle_ms: int = 30_000
    claim_interval_s: float = 10.0
    # Entries that cannot become an event (not UTF-8, a required field missing, over max_entry_bytes) or
    # that were delivered more than max_deliveries times (a poison that kills its consumer) go, with their
    # reason, to the dead-letter stream (default "<stream>:dead") instead of being retried forever.
    dead_letter_stream: str | None = None
    max_deliveries: int = 5
    max_entry_bytes: int = 65_536
    seen_ids_capacity: int = 1_000_000
    checkpoint_every_batches: int = 1
    epochs_per_batch: int = 1
    # Online exports are labelled "stable" directly when they pass the guard (no canary for them).
    label_stable: bool = True
    push_features: bool = True
    screening: ScreeningSettings = Field(default_factory=ScreeningSettings)


class TaskResources(BaseModel):
    """CPU/memory requests and limits of one KFP task's container (Kubernetes quantities; None: unset)."""

    model_config = ConfigDict(extra="forbid")

    cpu_request: str | None = None
    memory_request: str | None = None
    cpu_limit: str | None = None
    memory_limit: str | None = None


def _default_task_resources() -> dict[str, TaskResources]:
    return {
        "default": TaskResources(cpu_request="500m", memory_request="1Gi", memory_limit="4Gi"),
        "train": TaskResources(cpu_request="2", memory_request="4Gi", memory_limit="16Gi"),
        "features": TaskResources(cpu_request="1", memory_request="2Gi", memory_limit="8Gi"),
        "evaluate": TaskResources(cpu_request="1", memory_request="2Gi", memory_limit="8Gi"),
    }


class PipelineSettings(BaseModel):
    """KFP settings: images, cluster submission, task resources/retries/caching, GPU for training.

    Where the run's pods find their state (claims, subPaths, mount paths), which namespace and service
    account they run as, and which images they use follow ``settings.cluster`` (the layout) unless set here.
    """

    image: str | None = None  # None: cluster.images.component
    gpu_image: str | None = (
        None  # None: cluster.images.component_gpu (the CUDA variant, docker/Dockerfile.cuda)
    )
    host: str | None = None
    namespace: str | None = None  # None: cluster.namespace (the run must run where the claims are)
    service_account: str | None = None  # None: cluster.service_accounts.pipeline
    experiment: str = "freshrec"
    gpu_accelerator_type: str | None = None
    gpu_limit: int = 1
    gpu_tolerations: list[dict[str, Any]] = Field(default_factory=list)
    gpu_node_selector: dict[str, str] = Field(default_factory=dict)
    # Compile the layout's kfp-kubernetes mounts, settings ConfigMap and secrets into every task (kfp.local
    # ignores them, so local runs use the same YAML). Off only for a backend without kfp-kubernetes.
    cluster_mounts: bool = True
    # The rollout step's mode: auto (argo when environment is cluster, else local when the gateway answers,
    # else none) | local | argo | promote | none.
    rollout_mode: Literal["auto", "local", "argo", "promote", "none"] = "auto"
    # How long the rollout task follows an Argo canary before aborting it.
    rollout_timeout_s: float = 3600.0
    rollout_poll_s: float = 10.0
    # Per task (by component name, e.g. "train"; "default" for the others): container requests/limits.
    resources: dict[str, TaskResources] = Field(default_factory=_default_task_resources)
    # Retries per task ("default" for the others); steps that change outside state default to none.
    retries: dict[str, int] = Field(default_factory=lambda: {"default": 0, "ingest": 2, "training_set": 2})
    retry_backoff_s: float = 60.0
    # Caching per task, overriding the pipeline's own choice (which caches only deterministic steps).
    caching: dict[str, bool] = Field(default_factory=dict)


class Settings(BaseSettings):
    """Every setting of freshrec, grouped by concern."""

    model_config = SettingsConfigDict(env_prefix="FRESHREC_", env_nested_delimiter="__", extra="forbid")

    workdir: Path = Path(".freshrec")
    # Where this process runs: "local" (one machine) or "cluster" (a pod of the layout; the cluster's
    # settings ConfigMap sets it). It picks defaults that differ between the two, e.g. the rollout mode.
    environment: Literal["local", "cluster"] = "local"
    cluster: ClusterLayout = Field(default_factory=ClusterLayout)
    data: DataSettings = Field(default_factory=DataSettings)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    blessing: BlessingSettings = Field(default_factory=BlessingSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    triggers: TriggerSettings = Field(default_factory=TriggerSettings)
    online: OnlineSettings = Field(default_factory=OnlineSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)

    @model_validator(mode="after")
    def _follow_the_layout(self) -> Settings:
        """Fields left unset take the cluster layout's values: one source for names both ends use."""
        if self.rollout.namespace is None:
            self.rollout.namespace = self.cluster.namespace
        if self.rollout.rollout_name is None:
            self.rollout.rollout_name = self.cluster.rollout_name
        p = self.pipeline
        if p.namespace is None:
            p.namespace = self.cluster.namespace
        if p.service_account is None:
            p.service_account = self.cluster.service_accounts.pipeline
        if p.image is None:
            p.image = self.cluster.images.component
        if p.gpu_image is None:
            p.gpu_image = self.cluster.images.component_gpu
        return self

    # Derived locations under the workdir: one place, so every module agrees on the layout.
    @property
    def models_dir(self) -> Path:
        return self.workdir / "models"

    @property
    def eventlog_dir(self) -> Path:
        return self.workdir / "eventlog"

    @property
    def quarantine_dir(self) -> Path:
        return self.workdir / "quarantine"

    @property
    def tables_dir(self) -> Path:
        """Prepared entity tables (profiles, activity features) that Feast sources read."""
        return self.workdir / "tables"

    @property
    def reports_dir(self) -> Path:
        return self.workdir / "reports"

    @property
    def predictions_dir(self) -> Path:
        return self.workdir / "predictions"

    @property
    def references_dir(self) -> Path:
        """Drift reference profiles: ``<model>/<version>.parquet`` per pushed version, ``stable.parquet``."""
        return self.workdir / "references"

    @property
    def state_dir(self) -> Path:
        """Checkpoints, stream positions, alert and trigger state."""
        return self.workdir / "state"


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Build the settings once: defaults < YAML file < environment < explicit overrides.

    Args:
        config_file: a YAML file with the same nesting as :class:`Settings`; defaults to
            ``$FRESHREC_CONFIG`` when set.
        **overrides: top-level sections or fields, e.g. ``workdir=Path("/tmp/x")``.
    """
    path = config_file or os.environ.get("FRESHREC_CONFIG")
    file_values: dict[str, Any] = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must hold a mapping, got {type(loaded).__name__}")
        file_values = loaded
    env_settings = Settings()
    merged = _deep_merge(file_values, env_settings.model_dump(exclude_unset=True))
    merged = _deep_merge(merged, overrides)
    settings = Settings.model_validate(merged)
    # Relative paths mean "from where the command was started": pin them now, so that libraries which
    # resolve paths against their own roots (Feast resolves against its repo path) and child processes
    # started elsewhere (kfp.local tasks) all see the same places.
    settings.workdir = settings.workdir.expanduser().resolve()
    settings.data.datasets_dir = settings.data.datasets_dir.expanduser().resolve()
    settings.features.repo_dir = settings.features.repo_dir.expanduser().resolve()
    if settings.rollout.plan_file is not None:
        settings.rollout.plan_file = settings.rollout.plan_file.expanduser().resolve()
    return settings


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
