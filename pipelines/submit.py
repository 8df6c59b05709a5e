"""Submit a compiled pipeline to a Kubeflow Pipelines backend with ``kfp.Client``.

:func:`run_request` is the one place that decides where and as whom a run runs (the cluster layout's
namespace and the pipeline service account the overlays bind); :func:`submit` sends it, refusing a package
that does not mount the layout's claims; :func:`wait` follows a run to its end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunRequest:
    """Where a run runs and as whom: what the backend needs besides the package and its arguments."""

    namespace: str
    service_account: str
    experiment: str


def run_request(settings: Any) -> RunRequest:
    """The namespace, service account and experiment of a run for these settings.

    The namespace is the layout's (the run's pods must be where the claims are); the service account is
    the one the overlays bind with the rollout verbs (``kfp-kubernetes`` has no per-task account, so every
    task of the run has it).
    """
    p = settings.pipeline
    return RunRequest(
        namespace=p.namespace or settings.cluster.namespace,
        service_account=p.service_account or settings.cluster.service_accounts.pipeline,
        experiment=p.experiment,
    )


# States of a v2beta1 run that do not change any more.
FINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "CANCELLED"})
DEFAULT_POLL_S = 10.0


@dataclass
class Submission:
    """What the backend created."""

    kind: str  # "run" or "recurring_run"
    id: str
    experiment_id: str
    url: str


def make_client(
    host: str, token: str | None = None, namespace: str | None = None, verify_ssl: bool | None = None
) -> Any:
    """A ``kfp.Client`` for ``host`` (``https://.../pipeline``), with a bearer token when given.

    Args:
        host: the KFP API endpoint.
        token: a bearer token (e.g. a Kubeflow service-account token or an ``oauth2-proxy`` token).
        namespace: the Kubeflow profile namespace (multi-user deployments).
        verify_ssl: override TLS verification (None: the client's default).
    """
    import warnings

    import kfp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2.0.0-beta.2 and later"
        return kfp.Client(
            host=host, existing_token=token, namespace=namespace or "kubeflow", verify_ssl=verify_ssl
        )


def submit(
    client: Any,
    package: Path,
    *,
    experiment: str,
    arguments: dict[str, Any] | None = None,
    run_name: str | None = None,
    recurring_cron: str | None = None,
    namespace: str | None = None,
    enable_caching: bool | None = None,
    service_account: str | None = None,
    require_mounts: bool = True,
) -> Submission:
    """Start a run of ``package`` in ``experiment``, or a recurring run when ``recurring_cron`` is set.

    Args:
        client: from :func:`make_client`.
        package: the compiled pipeline YAML.
        experiment: the experiment name (created when missing).
        arguments: pipeline parameters.
        run_name: the run (or recurring run) display name; default: the package's stem.
        recurring_cron: a 6-field cron expression (``0 0 * * * *`` = hourly) for a recurring run.
        namespace: the Kubeflow namespace of the experiment (multi-user deployments).
        enable_caching: override the compiled caching options for every task.
        service_account: the Kubernetes service account every task pod runs as (None: KFP's default).
        require_mounts: refuse a package whose stateful tasks mount no volume (it would run with empty,
            pod-local state and publish nothing anyone reads).

    Raises:
        FileNotFoundError: no package there.
        ValueError: the package lacks the cluster mounts, or a bad cron expression.
    """
    from freshrec.pipelines.build import cluster_ready

    package = Path(package)
    if not package.is_file():
        raise FileNotFoundError(f"pipeline package not found: {package} (run `freshrec pipeline compile`)")
    if require_mounts:
        missing = cluster_ready(package)
        if missing:
            raise ValueError(
                f"{package} is not compiled for the cluster ({'; '.join(missing[:3])}): compile it with "
                "pipeline.cluster_mounts on (`freshrec pipeline compile`)"
            )
    name = run_name or package.stem
    exp = client.create_experiment(name=experiment, namespace=namespace)
    host = client._existing_config.host.rstrip("/")  # the client has no public accessor for its host
    if recurring_cron:
        if len(recurring_cron.split()) != 6:
            raise ValueError(
                f"cron expression {recurring_cron!r} must have 6 fields (seconds first), e.g. '0 0 * * * *'"
            )
        job = client.create_recurring_run(
            experiment_id=exp.experiment_id,
            job_name=name,
            cron_expression=recurring_cron,
            params=arguments or {},
            pipeline_package_path=str(package),
            enable_caching=enable_caching,
            service_account=service_account,
            no_catchup=True,
        )
        return Submission(
            "recurring_run",
            job.recurring_run_id,
            exp.experiment_id,
            f"{host}/#/recurringrun/details/{job.recurring_run_id}",
        )
    run = client.create_run_from_pipeline_package(
        str(package),
        arguments=arguments or {},
        run_name=name,
        experiment_id=exp.experiment_id,
        enable_caching=enable_caching,
        service_account=service_account,
    )
    return Submission("run", run.run_id, exp.experiment_id, f"{host}/#/runs/details/{run.run_id}")


def run_state(run: Any) -> str:
    """A v2beta1 run's state as an upper-case string (``RUNNING``, ``SUCCEEDED`` ...)."""
    return str(getattr(run, "state", "") or "PENDING").upper()


def task_states(run: Any) -> dict[str, str]:
    """Task name -> state of a run's task details (what the run's progress lines show)."""
    details = getattr(getattr(run, "run_details", None), "task_details", None) or []
    out = {}
    for t in details:
        name = getattr(t, "display_name", None) or getattr(t, "task_id", "?")
        out[str(name)] = str(getattr(t, "state", "") or "").upper()
    return out


def wait(
    client: Any,
    run_id: str,
    *,
    timeout_s: float = 6 * 3600,
    poll_s: float | None = None,
    on_change: Any = None,
    clock: Any = None,
    sleep: Any = None,
) -> Any:
    """Poll a run until it reaches a final state; call ``on_change(run)`` whenever its state or tasks change.

    Returns:
        The final run.

    Raises:
        TimeoutError: not finished after ``timeout_s`` (the run keeps running in the cluster).
    """
    import time

    poll_s = DEFAULT_POLL_S if poll_s is None else poll_s
    clock = clock or time.monotonic
    sleep = sleep or time.sleep
    deadline = clock() + timeout_s
    last: tuple[str, dict[str, str]] | None = None
    while True:
        run = client.get_run(run_id)
        seen = (run_state(run), task_states(run))
        if seen != last and on_change is not None:
            on_change(run)
        last = seen
        if seen[0] in FINAL_STATES:
            return run
        if clock() >= deadline:
            raise TimeoutError(f"run {run_id} still {seen[0]} after {timeout_s:g} s (it keeps running)")
        sleep(poll_s)
