"""The on-call incident drill: does the monitor page when, and only when, a person must act?

MovieLens-100k is replayed in time order through the real parts of the loop, once clean and once per
injected incident:

* a model trained on the earlier part of the stream (``freshrec.training.train``), published to a model
  repository and served by the TF-Serving-compatible server (scores over gRPC, the gateway's client);
* the stream feature state (one ``ActivityState``, as the stream feature job keeps it) that serving reads;
* the online learner (test-then-train, guarded exports published to the repository, picked up by the
  server's poller);
* the monitor (:mod:`freshrec.monitoring.monitor`: calibrated drift, data quality with train/serve skew,
  served quality over the window's labels, CBPE, liveness) and the alert manager.

Per scenario the table records whether a page fired, which alert, how many windows after the start of the
incident (0: in the window where it started), and whether the page's evidence names the cause (the column,
the component, "labels", "CTR", the version). The clean replay counts its pages (the target is none) and
the notices and retraining reasons it produced instead, next to the windows the old fixed-threshold drift
alert (share of drifted features >= 0.5) would have paged on in the same replay.

The stream feature job of issue 14 (``freshrec features stream``) is not on main yet: "the stream feature
job freezes" stops updating the activity state serving reads, which is what that job maintains (the loop's
click feed does the same today); the monitor sees the lag of that state and the served/offline skew.

``python -m benchmarks.oncall_drill`` (full: all of the replay) or ``--quick``; the HTML report (a plot per
incident) goes to ``.freshrec/benchmarks/oncall-drill/index.html``.
"""

from __future__ import annotations

import html
import itertools
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.results import Row

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DATASETS = (REPO / ".." / "shared" / "datasets").resolve()
OUT_DIR = REPO / ".freshrec" / "benchmarks" / "oncall-drill"

# incident -> (the alert that should page, a word its evidence must contain to name the cause)
INCIDENTS: dict[str, tuple[str, str]] = {
    "a feature becomes null": ("FreshrecFeatureMissing", "user_occupation"),
    "the stream feature job freezes": ("FreshrecStreamFeaturesStale", "stream_features"),
    "labels flip": ("FreshrecServedQualityDrop", "labels"),
    "CTR collapses": ("FreshrecCTRCollapse", "CTR"),
    "a column changes type": ("FreshrecFeatureTypeChanged", "item_year"),
    "the online learner stalls": ("FreshrecOnlineLearnerStalled", "online_learner"),
    "the server keeps an old version after a publish": ("FreshrecServingStaleVersion", "serving:"),
}
CLEAN = "clean replay"


@dataclass
class DrillConfig:
    """Sizes of one drill. ``full()`` replays all of MovieLens-100k after its first 80 %."""

    bootstrap_events: int | None = 12_000  # the latest N events before the cut (None: all of them)
    replay_events: int | None = 3_000
    window_events: int = 500
    reference_events: int = 2_000
    incident_window: int = 3  # windows 0..incident_window-1 are clean in every scenario
    epochs: int = 2
    window_seconds: float = 120.0  # virtual time per window on the monitor's clock
    incidents: tuple[str, ...] = tuple(INCIDENTS)
    seed: int = 42

    @classmethod
    def full(cls) -> DrillConfig:
        return cls(
            bootstrap_events=None,
            replay_events=None,
            window_events=2000,
            reference_events=5000,
            incident_window=4,
            epochs=3,
        )


@dataclass
class WindowRow:
    window: int
    window_end: str
    n: int
    pages: list[str]
    notices: list[str]
    served_logloss: float | None
    estimated_logloss: float | None
    drift_score: float | None
    drift_threshold: float | None
    fixed_drift_share: float
    retrain_reason: bool
    served_version: int | None


@dataclass
class ScenarioResult:
    name: str
    expected: str | None
    cause_word: str | None
    windows: list[WindowRow] = field(default_factory=list)
    first_pages: list[dict[str, Any]] = field(default_factory=list)  # the pages as they opened
    seconds: float = 0.0

    incident_window: int = 0

    @property
    def page(self) -> dict[str, Any] | None:
        """The first page of the expected alert at or after the incident (None: not paged)."""
        return next(
            (
                p
                for p in self.first_pages
                if p["alert"] == self.expected and p["window"] >= self.incident_window
            ),
            None,
        )

    @property
    def named(self) -> bool:
        p = self.page
        return (
            p is not None
            and self.cause_word is not None
            and self.cause_word in (p["cause"] + " " + p["summary"])
        )


@dataclass
class World:
    """What every scenario shares: data, the trained model's export, the monitored history."""

    users: pd.DataFrame
    items: pd.DataFrame
    bootstrap: pd.DataFrame
    replay: pd.DataFrame
    history: pd.DataFrame  # the bootstrap's training frame, scored by the model
    export: Path
    columns: dict[str, str]
    config: DrillConfig
    train_seconds: float


def prepare(config: DrillConfig, tmp: Path, datasets_dir: Path = DATASETS) -> World:
    """Load MovieLens-100k, train and export the bootstrap model, score its training window."""
    from freshrec.config import ModelSettings, TrainingSettings
    from freshrec.data.datasets import load_dataset
    from freshrec.features.training_set import build_training_frame
    from freshrec.model.export import export_model, spec_of
    from freshrec.model.spec import FeatureSpec
    from freshrec.monitoring.drift import resolve_columns
    from freshrec.online.learner import predict
    from freshrec.training import train

    ds = load_dataset("movielens-100k", datasets_dir)
    events = ds.events.sort_values(["event_timestamp", "event_id"], kind="stable").reset_index(drop=True)
    cut = int(len(events) * 0.8)
    boot, replay = events.iloc[:cut], events.iloc[cut:]
    if config.bootstrap_events:
        boot = boot.iloc[-config.bootstrap_events :]
    if config.replay_events:
        replay = replay.iloc[: config.replay_events]
    boot, replay = boot.reset_index(drop=True), replay.reset_index(drop=True)
    t0 = time.perf_counter()
    frame = build_training_frame(boot, ds.users, ds.items)
    spec = FeatureSpec.for_description(ds.description, id_hash_buckets=20_000, frame=frame)
    ms = ModelSettings(
        embedding_dim=16, id_hash_buckets=20_000, deep_units=[64, 32], cross_layers=2, dropout=0.1
    )
    n = len(frame)
    result = train(
        frame.iloc[: int(n * 0.9)],
        frame.iloc[int(n * 0.9) :],
        spec,
        ms,
        TrainingSettings(epochs=config.epochs, batch_size=512, learning_rate=1e-3, seed=config.seed),
    )
    export = export_model(result.model, tmp / "bootstrap-export", result.spec)
    frame["score"] = predict(result.model, frame, spec_of(result.model))
    columns = resolve_columns(spec_of(result.model), pd.DataFrame())
    return World(ds.users, ds.items, boot, replay, frame, export, columns, config, time.perf_counter() - t0)


def _served_features(
    events: pd.DataFrame, state: Any, users: pd.DataFrame, items: pd.DataFrame
) -> pd.DataFrame:
    """Feature rows as serving reads them: profiles + activity from the stream feature state, as of each event."""
    from freshrec.features.activity import ITEM_ACTIVITY, USER_ACTIVITY
    from freshrec.features.training_set import build_training_frame

    frame = build_training_frame(events, users, items)
    ts = events["event_timestamp"]
    user = state.user_rows(events["user_id"].astype(str), ts)
    item = state.item_rows(events["item_id"].astype(str), ts)
    for name in USER_ACTIVITY:
        frame[name] = user[name].to_numpy()
    for name in ITEM_ACTIVITY:
        frame[name] = item[name].to_numpy()
    return frame


def _predict(client: Any, frame: pd.DataFrame, batch: int, window: int) -> tuple[int | None, np.ndarray]:
    """Scores of every row through the server, in requests of at most ``batch`` rows (as pages arrive)."""
    scores = np.full(len(frame), np.nan)
    versions: list[int] = []
    for start in range(0, len(frame), batch):
        part = frame.iloc[start : start + batch]
        try:
            columns = {name: part[name].to_numpy() for name in part.columns}
            version, got = client.predict(columns, len(part), None, "stable")
        except Exception as exc:  # a broken input can make serving fail: those rows get no score
            log.warning("window %d: predict failed: %s", window, exc)
            continue
        scores[start : start + len(part)] = np.asarray(got, dtype=np.float64)
        versions.append(int(version))
    return (max(versions) if versions else None), scores


def _wait_served(base_url: str, model: str, version: int, timeout_s: float = 20.0) -> bool:
    from freshrec.online.freshness import version_available

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if version_available(base_url, model, version):
            return True
        time.sleep(0.1)
    return False


def run_scenario(world: World, name: str, workdir: Path) -> ScenarioResult:
    """Replay the stream with ``name``'s incident from ``incident_window`` on (none for the clean replay)."""
    from freshrec.config import load_settings
    from freshrec.features.activity import ActivityState
    from freshrec.features.training_set import build_training_frame
    from freshrec.model.export import load_keras_model
    from freshrec.model.repository import ModelRepository
    from freshrec.monitoring.alerts import AlertManager
    from freshrec.monitoring.drift import check_drift
    from freshrec.monitoring.monitor import (
        ServingState,
        guard_failures_in_a_row,
        monitor_for_stream,
        served_versions,
    )
    from freshrec.online.learner import Featurizer, OnlineLearner
    from freshrec.online.sources import Batch
    from freshrec.serving.gateway import ModelClient
    from freshrec.serving.server import ModelServer

    cfg = world.config
    expected, word = INCIDENTS.get(name, (None, None))
    out = ScenarioResult(name, expected, word, incident_window=cfg.incident_window)
    started = time.perf_counter()
    settings = load_settings(
        workdir=workdir,
        serving={"rest_port": 0, "grpc_port": 0, "poll_interval_s": 0.2},
        alerts={"console": False},
        online={"export_every_events": cfg.window_events, "micro_batch": 256},
    )
    repo = ModelRepository(settings.models_dir, settings.model.name)
    v1 = repo.publish(world.export, {"source": "batch"})
    repo.set_label("stable", v1)
    server = ModelServer(settings).start()
    client = ModelClient(f"{settings.serving.host}:{server.grpc_port}", settings.model.name)
    publishes: dict[int, float] = {v1: 0.0}
    clock = [0.0]

    def on_export(rec: Any) -> None:
        publishes[rec.version] = clock[0] - cfg.window_seconds / 2  # mid-window, before the check

    learner_state = ActivityState()
    learner_state.update(world.bootstrap)
    learner = OnlineLearner(
        load_keras_model(world.export),
        load_keras_model(world.export),
        Featurizer(world.users, world.items, learner_state),
        settings.online,
        repository=repo,
        parent_version=v1,
        on_export=on_export,
        validate=False,
    )
    stream_state = ActivityState()  # what the stream feature job keeps and serving reads
    stream_state.update(world.bootstrap)
    stream_newest = world.bootstrap["event_timestamp"].max()
    monitor = monitor_for_stream(
        settings,
        world.history,
        world.columns,
        reference_rows=cfg.reference_events,
        window_rows=cfg.window_events,
        growth_origin=world.bootstrap["event_timestamp"].min(),
    )
    alerts = AlertManager(settings.alerts, settings.state_dir, clock=lambda: clock[0])
    fixed_reference = world.history.iloc[-cfg.reference_events :]
    history = world.bootstrap
    open_pages: set[str] = set()
    rng = np.random.default_rng(cfg.seed)
    n_windows = math.ceil(len(world.replay) / cfg.window_events)
    try:
        for w in range(n_windows):
            clock[0] = (w + 1) * cfg.window_seconds
            hit = name != CLEAN and w >= cfg.incident_window
            events = world.replay.iloc[w * cfg.window_events : (w + 1) * cfg.window_events].copy()
            if hit and name == "labels flip":
                events["label"] = (1 - events["label"]).astype(events["label"].dtype)
            if hit and name == "CTR collapses":  # nine clicks in ten stop being recorded
                events["label"] = (events["label"] * (rng.random(len(events)) < 0.1)).astype(
                    events["label"].dtype
                )
            if hit and name == "the server keeps an old version after a publish" and w == cfg.incident_window:
                server.manager.stop()  # its poller hangs: what is loaded stays, nothing new is picked up
            # The stream feature job: each event's outcome updates the activity serving reads.
            if not (hit and name == "the stream feature job freezes"):
                stream_state.update(events)
                stream_newest = events["event_timestamp"].max()
            served = _served_features(events, stream_state, world.users, world.items)
            if hit and name == "a feature becomes null":
                served["user_occupation"] = None
            if hit and name == "a column changes type":  # an upstream export now writes the year as text
                served["item_year"] = served["item_year"].map(lambda x: f"{x:.0f}" if pd.notna(x) else None)
            version, scores = _predict(client, served, settings.serving.max_batch_size // 2, w)
            served = served.assign(score=scores)
            both = pd.concat([history, events], ignore_index=True)
            offline = build_training_frame(both, world.users, world.items).iloc[len(history) :]
            history = both
            # The online learner: test-then-train on the window's events, guarded exports.
            if not (hit and name == "the online learner stalls"):
                before = repo.latest()
                for i in range(0, len(events), settings.online.micro_batch):
                    learner.step(Batch(events.iloc[i : i + settings.online.micro_batch], None, np.zeros(0)))
                newest = repo.latest()
                stuck = hit and name == "the server keeps an old version after a publish"
                if newest != before and newest is not None and not stuck:
                    _wait_served(server.rest_url, settings.model.name, newest)
            learned = learner.totals.newest_learned_time
            stable = repo.stable()
            report = monitor.observe(
                w,
                served,
                now=clock[0],
                offline=offline.reset_index(drop=True),
                progress={
                    "stream_features": stream_newest,
                    "online_learner": pd.Timestamp(learned) if learned else None,
                },
                serving=ServingState(
                    published_version=stable,
                    published_at=publishes.get(stable),
                    served_versions=served_versions(server.rest_url, settings.model.name),
                    answered_versions=[version] if version is not None else [],
                ),
                guard_failures_in_a_row=guard_failures_in_a_row(learner.exports),
            )
            alerts.sync(settings.model.name, report.signals)
            fixed = check_drift(fixed_reference, served, world.columns, settings.drift, None, html=False)
            pages = [s for s in report.pages]
            for s in pages:
                if s.name not in open_pages:
                    out.first_pages.append(
                        {"window": w, "alert": s.name, "cause": s.cause, "summary": s.summary}
                    )
            open_pages = {s.name for s in pages}
            out.windows.append(
                WindowRow(
                    window=w,
                    window_end=str(events["event_timestamp"].max()),
                    n=len(events),
                    pages=[s.name for s in pages],
                    notices=[s.name for s in report.notices],
                    served_logloss=report.served.logloss if report.served else None,
                    estimated_logloss=report.estimate.logloss if report.estimate else None,
                    drift_score=report.drift.dataset_score if report.drift else None,
                    drift_threshold=report.drift.dataset_threshold if report.drift else None,
                    fixed_drift_share=fixed.drift_share,
                    retrain_reason=report.retrain_reason is not None,
                    served_version=version,
                )
            )
            log.info("%s: window %d: pages %s", name, w, [s.name for s in pages])
    finally:
        client.close()
        server.stop(0)
    out.seconds = time.perf_counter() - started
    return out


@dataclass
class DrillResult:
    config: DrillConfig
    scenarios: list[ScenarioResult]
    train_seconds: float
    seconds: float
    load: str

    @property
    def clean(self) -> ScenarioResult:
        return next(s for s in self.scenarios if s.name == CLEAN)

    @property
    def incidents(self) -> list[ScenarioResult]:
        return [s for s in self.scenarios if s.name != CLEAN]

    def windows_to_page(self) -> list[int]:
        return [s.page["window"] - self.config.incident_window for s in self.incidents if s.page]

    def estimate_errors(self) -> tuple[float, float, int]:
        """(CBPE MAE, naive MAE, windows) on the clean replay; naive: the previous window's realised logloss."""
        rows = self.clean.windows
        est, naive = [], []
        for prev, row in itertools.pairwise(rows):
            if row.served_logloss is None or row.estimated_logloss is None or prev.served_logloss is None:
                continue
            est.append(abs(row.estimated_logloss - row.served_logloss))
            naive.append(abs(prev.served_logloss - row.served_logloss))
        return (
            float(np.mean(est)) if est else math.nan,
            float(np.mean(naive)) if naive else math.nan,
            len(est),
        )


def drill(config: DrillConfig, datasets_dir: Path = DATASETS) -> DrillResult:
    """Prepare once, then run the clean replay and every incident."""
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="oncall-drill-"))
    try:
        world = prepare(config, tmp, datasets_dir)
        scenarios = []
        for name in (CLEAN, *config.incidents):
            print(f"   drill: {name} ...", flush=True)
            scenarios.append(run_scenario(world, name, tmp / f"s{len(scenarios)}"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load = Path("/proc/loadavg").read_text().split()[0] if os.path.exists("/proc/loadavg") else "?"
    return DrillResult(config, scenarios, world.train_seconds, time.perf_counter() - start, load)


def rows(result: DrillResult, label: str = "") -> list[Row]:
    """The drill's figures for results.md (names as issue 16 gives them)."""
    cfg = result.config
    incidents = result.incidents
    paged = [s for s in incidents if s.page]
    named = [s for s in paged if s.named]
    clean = result.clean
    clean_pages = len(clean.first_pages)
    old_alerts = sum(1 for r in clean.windows if r.fixed_drift_share >= 0.5)
    notices = sum(1 for r in clean.windows if r.notices)
    retrain = sum(1 for r in clean.windows if r.retrain_reason)
    waits = result.windows_to_page()
    est, naive, n_est = result.estimate_errors()
    span = (
        f"movielens-100k, {len(clean.windows)} windows of {cfg.window_events} events "
        f"({'all' if cfg.replay_events is None else cfg.replay_events} replayed after "
        f"{'the first 80 %' if cfg.bootstrap_events is None else f'{cfg.bootstrap_events} bootstrap events'}); "
        f"incidents from window {cfg.incident_window}; load avg {result.load}{label}"
    )
    missed = [s.name for s in incidents if not s.page]
    return [
        Row(
            "oncall drill: pages on the clean replay",
            clean_pages,
            old_alerts,
            conditions=f"{span}; baseline: windows the fixed drift-share alert (>= 0.5) fires on in the same "
            f"replay; instead: {notices} window(s) with notices, {retrain} with a retraining reason",
        ),
        Row(
            "oncall drill: incidents paged",
            f"{len(paged)}/{len(incidents)}",
            conditions=span + (f"; not paged: {', '.join(missed)}" if missed else ""),
        ),
        Row(
            "oncall drill: median windows to page",
            float(np.median(waits)) if waits else math.nan,
            conditions=f"{span}; 0 = paged in the incident's first window; per incident: "
            + ", ".join(f"{s.name} {s.page['window'] - cfg.incident_window}" for s in paged),
        ),
        Row(
            "oncall drill: pages naming the cause",
            f"{len(named)}/{len(paged)}",
            conditions=span,
        ),
        Row(
            "oncall drill: label-free estimate error",
            est,
            naive,
            conditions=f"{span}; mean |CBPE estimated - realised served logloss| over {n_est} clean windows; "
            "baseline: the previous window's realised logloss as the guess",
        ),
    ]


def render(result: DrillResult, out_dir: Path = OUT_DIR) -> Path:
    """The drill's report: the table, then per scenario a plot (served vs estimated logloss, drift score)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    e = html.escape
    cfg = result.config
    table = []
    for s in result.scenarios:
        p = s.page
        table.append(
            "<tr>"
            f"<td>{e(s.name)}</td><td>{e(s.expected or '—')}</td>"
            f"<td>{'yes' if p else ('—' if s.name == CLEAN else '<b>no</b>')}</td>"
            f"<td>{p['window'] - cfg.incident_window if p else '—'}</td>"
            f"<td>{('yes' if s.named else '<b>no</b>') if p else '—'}</td>"
            f"<td>{e(', '.join(sorted({f['alert'] for f in s.first_pages})) or 'none')}</td>"
            f"<td>{e(p['summary']) if p else ''}</td><td>{s.seconds:.0f}</td></tr>"
        )
    sections = []
    for i, s in enumerate(result.scenarios):
        df = pd.DataFrame([asdict(r) for r in s.windows])
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.4))
        ax1.plot(df["window"], df["served_logloss"], "o-", label="served logloss (labels)")
        ax1.plot(df["window"], df["estimated_logloss"], "s--", label="label-free estimate (CBPE)")
        ax2.bar(df["window"], df["drift_score"].fillna(0), color="#6b8fbf", label="drift score")
        ax2.plot(df["window"], df["drift_threshold"], "--", color="#e67e22", label="calibrated threshold")
        for ax in (ax1, ax2):
            if s.name != CLEAN:
                ax.axvline(cfg.incident_window - 0.5, color="#888", ls=":", label="incident starts")
            for page in s.first_pages:
                ax.axvline(page["window"], color="#c0392b", alpha=0.5)
            ax.set_xlabel("window")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        ax1.set_title("served quality (red lines: a page opened)")
        ax2.set_title("drift (a notice, never a page)")
        fig.suptitle(s.name)
        fig.tight_layout()
        png = f"scenario-{i}.png"
        fig.savefig(out_dir / png, dpi=90)
        plt.close(fig)
        pages = (
            "".join(
                f"<li>window {p['window']}: <b>{e(p['alert'])}</b> (cause: {e(p['cause'])}) — {e(p['summary'])}</li>"
                for p in s.first_pages
            )
            or "<li>no pages</li>"
        )
        sections.append(f"<h2>{e(s.name)}</h2><img src='{png}' alt='{e(s.name)}'><ul>{pages}</ul>")
    figures = "".join(
        f"<tr><td>{e(r.figure)}</td><td>{e(r.cells()[1])}</td><td>{e(r.cells()[2])}</td><td>{e(r.cells()[4])}</td></tr>"
        for r in rows(result)
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>freshrec on-call drill</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }}
h2 {{ margin-top: 2rem; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; margin: .5rem 0; font-size: .9rem; }}
td, th {{ border: 1px solid #ddd; padding: .25rem .6rem; text-align: left; vertical-align: top; }}
thead th {{ background: #f4f6f8; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>freshrec on-call drill</h1>
<p>MovieLens-100k replayed through the model server, the stream feature state, the online learner and the
monitor; incidents start at window {cfg.incident_window}. Training took {result.train_seconds:.0f} s, the
whole drill {result.seconds:.0f} s (load average {e(result.load)}).</p>
<table><thead><tr><th>figure</th><th>value</th><th>baseline</th><th>conditions</th></tr></thead>{figures}</table>
<table><thead><tr><th>scenario</th><th>expected page</th><th>paged</th><th>windows to page</th>
<th>names the cause</th><th>pages opened</th><th>evidence</th><th>s</th></tr></thead>{"".join(table)}</table>
{"".join(sections)}
</body></html>
"""
    index = out_dir / "index.html"
    index.write_text(page)
    return index


def run(quick: bool) -> list[Row]:
    """``make bench`` entry (through ``bench_oncall``): the full drill, or the reduced one with ``quick``."""
    result = drill(DrillConfig() if quick else DrillConfig.full())
    index = render(result)
    print(f"   drill report: {index}")
    return rows(result, "" if not quick else "; quick")


if __name__ == "__main__":
    from benchmarks.results import main_for

    main_for(run)
