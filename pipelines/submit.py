"""Submit a compiled pipeline to a Kubeflow Pipelines backend with ``kfp.Client``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


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
    """
    package = Path(package)
    if not package.is_file():
        raise FileNotFoundError(f"pipeline package not found: {package} (run `freshrec pipeline compile`)")
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
    )
    return Submission("run", run.run_id, exp.experiment_id, f"{host}/#/runs/details/{run.run_id}")
