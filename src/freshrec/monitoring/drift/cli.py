"""``freshrec drift``: check a current window against a reference window.

Only stdlib, typer, rich and freshrec.config at module level; pandas/numpy/Evidently are imported inside
the command so that ``freshrec --help`` stays fast.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from freshrec.config import Settings

if TYPE_CHECKING:
    import pandas as pd

    from freshrec.monitoring.drift import DriftResult

app = typer.Typer(
    help="Drift and data-quality checks (Evidently report + JSON verdict), alerts, metrics, triggers."
)
console = Console()

_STYLE = {"ok": "green", "drift": "yellow", "quality_failure": "red", "not_enough_data": "magenta"}


@app.callback()
def _group() -> None:
    """Drift and data-quality checks (Evidently report + JSON verdict), alerts, metrics, triggers."""


@app.command("check")
def check(
    ctx: typer.Context,
    reference: Path = typer.Option(
        ..., "--reference", "-r", help="Reference window: Parquet file/dir or CSV."
    ),
    current: Path = typer.Option(..., "--current", "-c", help="Current window: Parquet file/dir or CSV."),
    columns: list[str] = typer.Option(
        None,
        "--columns",
        help="Columns to check (repeat or comma-separate); default: all but ids/timestamps.",
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Report folder (default <workdir>/reports/drift)."
    ),
    model: str | None = typer.Option(
        None, "--model", help="Model name for alerts and metrics (default model.name)."
    ),
    last_hours: float | None = typer.Option(
        None,
        "--last-hours",
        help="Keep only the current rows within this many hours of its newest event_timestamp.",
    ),
    with_features: bool = typer.Option(
        False,
        "--with-features",
        help="Current holds raw events (e.g. the event log): join profiles from <workdir>/tables and compute "
        "the activity features (the training-set columns) before checking.",
    ),
    cache_key: str | None = typer.Option(
        None, "--cache-key", help="Cache the reference profile under this key (e.g. the model version)."
    ),
    html: bool = typer.Option(True, "--html/--no-html", help="Render the Evidently HTML report."),
    alert: bool = typer.Option(
        True, "--alert/--no-alert", help="Fire/resolve alerts at the configured receivers."
    ),
    metrics_textfile: Path | None = typer.Option(
        None, "--metrics-textfile", help="node-exporter textfile (default <workdir>/state/metrics/...)."
    ),
    pushgateway: str | None = typer.Option(None, "--pushgateway", help="Push metrics to this Pushgateway."),
    trigger: str = typer.Option(
        "none", "--trigger", help="Evaluate the retraining trigger: none | local | kfp."
    ),
    pipeline_package: Path | None = typer.Option(
        None, "--pipeline-package", help="Compiled pipeline for --trigger kfp."
    ),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 unless the verdict is ok (for CI gates)."),
    calibrate: bool = typer.Option(
        True,
        "--calibrate/--no-calibrate",
        help="Calibrate the drift thresholds on the reference's own earlier windows (fixed ones if too short).",
    ),
    predictions: Path | None = typer.Option(
        None, "--predictions", help="Prediction log folder: served quality (joined with the events' clicks)."
    ),
    events: Path | None = typer.Option(
        None,
        "--events",
        help="Event log for the click join and the learner's lag (default: --current with --with-features).",
    ),
    serving_url: str | None = typer.Option(
        None, "--serving-url", help="Model server REST URL: page when it does not serve the stable version."
    ),
) -> None:
    """Compare --current with --reference; print the verdict table, the pages and notices, the report path."""
    import pandas as pd

    from freshrec.monitoring import prometheus as prom
    from freshrec.monitoring.drift import read_frame
    from freshrec.monitoring.job import window_report

    settings: Settings = ctx.obj
    model_name = model or settings.model.name
    out_dir = out or settings.reports_dir / "drift"
    textfile = (
        metrics_textfile
        or settings.drift.metrics_textfile
        or prom.default_textfile(settings.state_dir, model_name)
    )
    gateway = pushgateway or settings.drift.pushgateway_url
    cols = [c.strip() for item in (columns or []) for c in item.split(",") if c.strip()] or None
    try:
        with console.status("reading windows and checking drift…"):
            result, notes, raw = _run_check(
                settings,
                reference,
                current,
                cols,
                out_dir,
                last_hours,
                cache_key,
                html,
                with_features,
                calibrate,
            )
            event_frame = read_frame(events) if events is not None else raw
            report, _ = window_report(
                settings,
                result,
                events=event_frame,
                predictions_dir=predictions,
                window=pd.Timedelta(hours=last_hours) if last_hours else None,
                serving_url=serving_url,
            )
    except (FileNotFoundError, ValueError) as exc:
        _record_failure(model_name, textfile, gateway)
        console.print(f"[red]drift check failed:[/] {exc}")
        raise typer.Exit(2) from None
    except Exception:
        _record_failure(model_name, textfile, gateway)
        raise

    console.print(_table(result))
    style = _STYLE[result.verdict]
    console.print(f"verdict: [bold {style}]{result.verdict}[/] — {result.reason}")
    console.print(f"report: {result.html_path or '(no HTML)'}\nresult: {result.json_path}")

    # What pages and what is a notice: the same signals locally (receivers) and in a cluster, where the
    # PrometheusRules fire on the freshrec_monitor_alert series pushed here.
    for note in notes:
        console.print(f"[dim]{note}[/]")
    for s in report.signals:
        label = {"critical": "[bold red]PAGE[/]", "warning": "[yellow]TICKET[/]", "info": "[cyan]NOTICE[/]"}
        quiet = f" (inhibited by {report.inhibited[s.name]})" if s.name in report.inhibited else ""
        console.print(f"{label[s.severity]} {s.name}: {s.summary}{quiet}", highlight=False)
    registry = prom.record_check(result, model_name)
    prom.record_monitor(report, model_name, registry)
    prom.write_textfile(registry, textfile)
    if gateway:
        try:
            prom.push(registry, gateway, model_name)
        except OSError as exc:
            console.print(f"[yellow]metrics push to the Pushgateway failed:[/] {exc}")
    if alert:
        from freshrec.monitoring.alerts import AlertManager

        manager = AlertManager(settings.alerts, settings.state_dir)
        for d in manager.sync(model_name, report.signals):
            mark = "[green]delivered[/]" if d.ok else f"[red]not delivered[/] ({d.skipped or d.error})"
            console.print(f"alert {d.action} {d.key} → {d.receiver}: {mark}")
    if trigger != "none":
        _trigger(settings, result, trigger, pipeline_package)
    if strict and result.verdict != "ok":
        raise typer.Exit(1)


def _run_check(
    settings: Settings,
    reference: Path,
    current: Path,
    columns: list[str] | None,
    out_dir: Path,
    last_hours: float | None,
    cache_key: str | None,
    html: bool,
    with_features: bool = False,
    calibrate: bool = True,
) -> tuple[DriftResult, list[str], pd.DataFrame | None]:
    """The check, its notes on how thresholds were set, and the raw events (``--with-features``)."""
    import pandas as pd

    from freshrec.monitoring.drift import read_frame
    from freshrec.monitoring.job import calibrated_check

    cur = read_frame(current)
    raw = cur if with_features else None
    if with_features:
        from freshrec.features.training_set import build_training_frame

        tables = settings.tables_dir
        for name in ("users.parquet", "items.parquet"):
            if not (tables / name).exists():
                raise FileNotFoundError(
                    f"--with-features needs {tables / name} (run `freshrec data prepare`)"
                )
        # Activity features need the history: build on every event, then cut the window.
        cur = build_training_frame(
            cur.sort_values("event_timestamp", kind="stable"),
            pd.read_parquet(tables / "users.parquet"),
            pd.read_parquet(tables / "items.parquet"),
        )
    if last_hours is not None:
        if "event_timestamp" not in cur.columns:
            raise ValueError(f"{current}: --last-hours needs an event_timestamp column")
        ts = pd.to_datetime(cur["event_timestamp"], utc=True)
        cur = cur[ts >= ts.max() - pd.Timedelta(hours=last_hours)]
    result, notes = calibrated_check(
        settings,
        read_frame(reference),
        cur,
        columns,
        out_dir,
        html=html,
        calibrate=calibrate,
        profile_cache_dir=settings.state_dir / "drift-profiles" if cache_key else None,
        cache_key=cache_key,
    )
    return result, notes, raw


def _table(result: DriftResult) -> Table:
    table = Table(title=f"drift: {result.n_reference:,} reference rows vs {result.n_current:,} current rows")
    table.add_column("feature", no_wrap=True)
    for col, justify in [
        ("method", "left"),
        ("score", "right"),
        ("threshold", "right"),
        ("drifted", "center"),
        ("missing", "right"),
        ("quality", "left"),
    ]:
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    failures: dict[str, list[str]] = {}
    for f in result.quality_failures:
        failures.setdefault(f.column or "", []).append(f.check)
    rows = list(result.features.values())
    if result.prediction_drift is not None:
        rows.append(result.prediction_drift)
    for feat in rows:
        q = result.quality.get(feat.name)
        table.add_row(
            feat.name,
            feat.method,
            f"{feat.score:.4g}",
            f"{feat.threshold:.3g}",
            "[red]yes[/]" if feat.drifted else "no",
            f"{q.missing_share:.1%}" if q else "—",
            ", ".join(failures.get(feat.name, [])) or "ok",
        )
    for name, why in result.skipped.items():
        table.add_row(name, "—", "—", "—", "skipped", "—", why)
    for name in result.columns:
        if name not in result.features and name not in result.skipped:
            table.add_row(name, "—", "—", "—", "—", "—", ", ".join(failures.get(name, [])))
    if result.target_drift is not None:
        t = result.target_drift
        table.add_row(
            t.column,
            "target rate",
            f"{t.abs_change:.4g}",
            f"{t.threshold:.3g}",
            "[red]yes[/]" if t.drifted else "no",
            "—",
            f"{t.reference_rate:.3f} → {t.current_rate:.3f}",
        )
    return table


def _record_failure(model: str, textfile: Path, gateway: str | None) -> None:
    from freshrec.monitoring import prometheus as prom

    registry = prom.record_failure(model, textfile)
    prom.write_textfile(registry, textfile)
    if gateway:
        with contextlib.suppress(OSError):  # the check's own error is what the operator needs to see
            prom.push(registry, gateway, model)


def _trigger(settings: Settings, result: DriftResult, kind: str, package: Path | None) -> None:
    from freshrec.triggers import KfpLauncher, TriggerPolicy, local_pipeline_launcher

    policy = TriggerPolicy(settings.triggers, settings.state_dir)
    if kind == "local":
        launcher = local_pipeline_launcher(settings)
    elif kind == "kfp":
        if package is None:
            raise typer.BadParameter(
                "--trigger kfp needs --pipeline-package", param_hint="--pipeline-package"
            )
        launcher = KfpLauncher.from_settings(settings.pipeline, package)
    else:
        raise typer.BadParameter(f"unknown trigger {kind!r} (none | local | kfp)", param_hint="--trigger")
    decision = policy.evaluate(launcher, drift=result)
    console.print(f"trigger: [bold]{decision.action}[/] — {decision.reason}")
    if decision.action == "launch" and kind == "local" and decision.run_id:
        with console.status(f"local pipeline run {decision.run_id} running…"):
            launcher.wait(decision.run_id)  # the CLI process must outlive its run
        if decision.run_id in launcher.errors:
            console.print(f"[red]run {decision.run_id} failed:[/] {launcher.errors[decision.run_id]}")
            raise typer.Exit(1)
