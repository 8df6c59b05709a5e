"""The whole loop, locally, on real data.

Stages (each prints one line and is recorded in the run report):

1. **prepare** — the dataset's earlier part (``bootstrap_fraction`` by time) is validated into the event
   log (bad rows to quarantine), profiles are written as Feast sources;
2. **bootstrap** — the ``continuous_training`` KFP pipeline through ``kfp.local``: its ``features`` task
   runs Feast apply + materialize (SQLite online store, file offline store), then it trains, evaluates,
   blesses and pushes the first model, labelled ``stable``;
3. **serve** — the TF-Serving-compatible model server (REST + gRPC) and the ranking gateway start on
   loopback;
4. **replay** — the later part of the data is replayed in time order, window by window: each user's
   impressions become ranking requests through the gateway (logged predictions), then the clicks land in
   the event log; the online learner learns them (test-then-train) and exports guarded versions the server
   picks up; the drift monitor compares the window with the production model's training data, alerts, and
   its verdict (or an online-quality drop) may trigger the retraining pipeline, which runs in the
   background while the replay goes on (as it would in a cluster; ``canary_reserve_windows`` are held back
   for its canary), and whose model then goes out by canary on live traffic (analysis on predictions
   joined with clicks) and is promoted or rolled back;
5. **report** — ``<workdir>/reports/<run>/index.html``.

A run restarts cleanly: it takes a lock on the workdir, clears the loop's state (event log, models,
features, predictions — never reports) unless ``keep_state``, and writes the run record atomically after
every stage, so Ctrl-C leaves a readable, consistent report and nothing half-written.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import math
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
from rich.console import Console

from freshrec.config import Settings
from freshrec.report import RunRecord, StageRecord, render
from freshrec.rollout.controller import CanaryStopped

log = logging.getLogger(__name__)

# Loop state under the workdir that a fresh run clears (reports/ is kept).
STATE_DIRS = ("eventlog", "quarantine", "tables", "models", "predictions", "state", "feast", "kfp", "runs")


@dataclass
class RunOptions:
    """What ``freshrec run`` can change; ``quick()`` gives the small run of the test suite."""

    dataset: str | None = None
    bootstrap_fraction: float = 0.8
    max_bootstrap_events: int | None = None  # keep only the latest N events before the cut (None: all)
    max_replay_events: int | None = None  # replay at most N events after the cut (None: all)
    window_events: int = 2000  # events per replay window (drift check, metrics row)
    reference_events: int = 5000  # the latest N training events are the drift reference
    speedup: float | None = None  # stream seconds per wall second; None: as fast as the machine goes
    epochs: int | None = None  # training epochs for the pipelines (None: settings.training.epochs)
    retrain: bool = True
    keep_state: bool = False
    page_size: int = 10  # candidate items per ranking request
    canary_min_clicks: int = 30  # per arm, before the online-quality checks can conclude
    canary_min_requests: int = 20
    canary_max_wait_windows: int = 3  # windows an inconclusive analysis may wait for more traffic
    # The retraining pipeline runs while the replay goes on; once only this many windows are left, the
    # replay waits for it, so its canary has traffic: one window per pause of the canary plan, and one
    # for an analysis that needs more clicks before it can conclude.
    canary_reserve_windows: int = 3
    max_retrains: int = 1
    # The learner exports (guarded) every N learned events; the replay lets it learn the landed events
    # that often, so a page is served by a version at most N events behind it.
    export_every_events: int = 500
    drift_windows_to_retrain: int = 2  # consecutive drifted windows before the retraining pipeline starts
    # True: the online learner trains on the features each impression was served with (what the gateway
    # looked up at request time) instead of exact point-in-time ones. Off: measured no better (MovieLens,
    # seed 42: --quick served 0.6618 vs 0.6631, full 0.7200 vs 0.7220).
    learn_on_served_features: bool = False
    run_id: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y%m%d-%H%M%S"))

    @classmethod
    def quick(cls, **overrides: Any) -> RunOptions:
        base = dict(
            max_bootstrap_events=12_000,
            max_replay_events=4_000,
            window_events=800,
            reference_events=2_000,
            epochs=2,
            canary_reserve_windows=2,  # 5 windows: a third would leave none to replay beside the pipeline
        )
        base.update(overrides)
        return cls(**base)


def apply_options(settings: Settings, options: RunOptions) -> Settings:
    """The run's settings: ``options`` applied onto ``settings`` once (a copy; ``settings`` is untouched).

    Every stage and every child pipeline reads this one object (the child gets it as its ``--config``), so
    ``freshrec run --dataset X`` trains, serves and monitors X's features, not the default dataset's.
    """
    update: dict[str, Any] = {}
    if options.dataset:
        dataset = options.dataset
        path = Path(dataset).expanduser()
        if path.suffix in {".yaml", ".yml"} or path.is_file():
            dataset = str(path.resolve())  # the child pipeline's tasks run elsewhere
        update["data"] = settings.data.model_copy(update={"dataset": dataset})
    if options.epochs:
        update["training"] = settings.training.model_copy(update={"epochs": options.epochs})
    # The replay hands the learner what landed once there are export_every_events events (a window's end:
    # whatever is left); one poll takes all of them, so its export follows the batch's last event (with a
    # smaller poll the export would fire mid-batch and the rest would wait a whole batch to be served).
    every = options.export_every_events
    update["online"] = settings.online.model_copy(
        update={"export_every_events": every, "micro_batch": max(settings.online.micro_batch, 2 * every)}
    )
    return settings.model_copy(update=update)


class LoopError(RuntimeError):
    """A stage failed; the message says which and why."""


class Loop:
    """Runs the stages and keeps the :class:`RunRecord` up to date."""

    def __init__(self, settings: Settings, options: RunOptions, console: Console | None = None) -> None:
        self.settings = apply_options(settings, options)
        self.options = options
        self.console = console or Console()
        self.report_dir = settings.reports_dir / options.run_id
        self.record = RunRecord(
            run_id=options.run_id,
            dataset=self.settings.data.dataset,
            options={
                **{k: v for k, v in vars(options).items() if k != "run_id"},
                "drift_share_threshold": settings.drift.drift_share_threshold,
                "workdir": str(settings.workdir),
            },
        )
        self._server: Any = None
        self._gateway: Any = None
        self._in_canary = False
        self._retrains = 0
        self._job: _PipelineJob | None = None  # the retraining pipeline running in the background
        self._landed = 0  # batches of replayed events appended to the event log

    # ------------------------------------------------------------------------------------------ driver
    def run(self) -> RunRecord:
        """Run every stage; always leave a report. Ctrl-C stops cleanly (status ``interrupted``)."""
        self.settings.workdir.mkdir(parents=True, exist_ok=True)
        with _workdir_lock(self.settings.workdir):
            try:
                if not self.options.keep_state:
                    self._clear_state()
                self._stage("prepare", self._prepare)
                self._stage("bootstrap", self._bootstrap)
                self._stage("serve", self._serve)
                self._stage("replay", self._replay)
                self.record.status = "ok"
            except KeyboardInterrupt:
                self.record.status = "interrupted"
                self.console.print("[yellow]interrupted: stopping cleanly[/yellow]")
            except LoopError as exc:
                self.record.status = "failed"
                self.console.print(f"[red]failed:[/red] {exc}")
            finally:
                self._shutdown()
                self.record.finished_at = datetime.now(UTC).isoformat(timespec="seconds")
                self._summarise()
                index = render(self.record, self.report_dir)
                self.record.links.append({"label": "this report", "href": str(index)})
        return self.record

    def _stage(self, name: str, fn: Any) -> Any:
        self.console.rule(f"[bold]{name}")
        start = time.perf_counter()
        try:
            detail = fn() or ""
        except KeyboardInterrupt:
            self.record.stages.append(StageRecord(name, "interrupted", time.perf_counter() - start))
            raise
        except LoopError:
            self.record.stages.append(StageRecord(name, "failed", time.perf_counter() - start))
            raise
        except Exception as exc:
            log.exception("stage %s failed", name)
            self.record.stages.append(StageRecord(name, "failed", time.perf_counter() - start, repr(exc)))
            raise LoopError(f"stage {name!r} failed: {exc}") from exc
        seconds = time.perf_counter() - start
        self.record.stages.append(StageRecord(name, "ok", round(seconds, 1), str(detail)))
        self.console.print(f"[green]✓[/green] {name} ({seconds:.0f} s) {detail}")
        self.record.save(self.report_dir / "run.json")
        return detail

    def _clear_state(self) -> None:
        for name in STATE_DIRS:
            shutil.rmtree(self.settings.workdir / name, ignore_errors=True)

    # ------------------------------------------------------------------------------------------ stages
    def _prepare(self) -> str:
        from freshrec.data.datasets import Dataset, load_dataset, load_description
        from freshrec.data.prepare import prepare_dataset

        desc = load_description(self.settings.data.dataset)
        data = load_dataset(desc, self.settings.data.datasets_dir)
        events = data.events.sort_values(["event_timestamp", "event_id"], kind="stable").reset_index(
            drop=True
        )
        cut = int(len(events) * self.options.bootstrap_fraction)
        boot = events.iloc[:cut]
        if self.options.max_bootstrap_events:
            boot = boot.iloc[-self.options.max_bootstrap_events :]
        replay = events.iloc[cut:]
        if self.options.max_replay_events:
            replay = replay.iloc[: self.options.max_replay_events]
        self.users, self.items = data.users, data.items
        self.bootstrap_events = boot.reset_index(drop=True)
        self.replay_events = replay.reset_index(drop=True)
        report = prepare_dataset(
            Dataset(events=self.bootstrap_events, users=data.users, items=data.items, description=desc),
            self.settings,
        )
        ing = report.ingest
        return (
            f"{desc.name}: {ing.received:,} events received, {ing.accepted:,} accepted, "
            f"{ing.quarantined:,} quarantined; {len(self.replay_events):,} events held back for the replay "
            f"({_span(self.replay_events)})"
        )

    def _bootstrap(self) -> str:
        from freshrec.model.repository import ModelRepository

        # The pipeline's tasks run one at a time in child processes: meanwhile this process imports what
        # serving and the replay need (TensorFlow, Evidently: ~15 s of CPU) on the core they leave idle.
        preload = threading.Thread(target=_preload, name="freshrec-preload", daemon=True)
        preload.start()
        run = self._run_pipeline("bootstrap", rollout_mode="promote")
        preload.join()
        gc.freeze()  # the imported modules live as long as the run: later collections need not scan them
        version = run.pushed_version
        repo = ModelRepository(self.settings.models_dir, self.settings.model.name)
        if version is None or repo.stable() is None:
            raise LoopError(
                "the bootstrap pipeline did not push a model (blessing or data-quality gate failed); "
                f"see {run.run_dir}"
            )
        self.repo = repo
        meta = repo.metadata(version)
        self._note_version(version, "pipeline (bootstrap)")
        return (
            f"version {version} stable (AUC {meta.get('metrics', {}).get('auc', float('nan')):.3f}) "
            f"in {run.duration_s:.0f} s; {_features_summary(run)}"
        )

    def _run_pipeline(self, label: str, rollout_mode: str) -> Any:
        """Run ``continuous_training`` (see :meth:`_start_pipeline`) and wait for it, with a spinner."""
        job = self._start_pipeline(label, rollout_mode)
        with self.console.status(f"continuous_training pipeline ({label}) running"):
            return self._finish_pipeline(job)

    def _start_pipeline(self, label: str, rollout_mode: str) -> _PipelineJob:
        """Start ``continuous_training`` through kfp.local in a child ``freshrec pipeline run --local``.

        A child process keeps the tasks' long logs in a file of the report and out of the console, gets
        exactly this loop's settings (written next to the log), and lets the replay go on meanwhile.
        """
        config = self.write_child_settings()
        log_path = self.report_dir / f"pipeline-{label}.log"
        cmd = [
            sys.executable,
            "-m",
            "freshrec.cli",
            "--config",
            str(config),
            "--workdir",
            str(self.settings.workdir.resolve()),
            "pipeline",
            "run",
            "--local",
            "--rollout-mode",
            rollout_mode,
        ]
        self.console.print(
            f"  kfp.local: continuous_training ({label}, rollout {rollout_mode}); log → {log_path}"
        )
        kfp_root = self.settings.workdir / "kfp"
        before = set(kfp_root.iterdir()) if kfp_root.exists() else set()
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "COLUMNS": "200"}
        fh = open(log_path, "wb")  # noqa: SIM115 (closed by _finish_pipeline or _stop_pipeline)
        try:
            # Its own process group: stopping it stops the task it is running too (see _stop_pipeline).
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except BaseException:
            fh.close()
            raise
        return _PipelineJob(label, proc, log_path, fh, before, time.perf_counter())

    def write_child_settings(self) -> Path:
        """The run's settings as the child pipeline's ``--config`` (``<report>/settings.yaml``)."""
        import yaml

        from freshrec.io import atomic_write_text

        data = self.settings.model_dump(mode="json")
        data.pop("workdir")  # given on the command line
        path = self.report_dir / "settings.yaml"
        atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
        return path

    def _finish_pipeline(self, job: _PipelineJob) -> Any:
        """Wait for a started pipeline; its :class:`LocalRun`. Ctrl-C while waiting stops the child."""
        from freshrec.pipelines.local import LocalRun, collect_tasks

        try:
            rc = job.proc.wait()
        except BaseException:
            _stop_pipeline(job)
            raise
        job.log.close()
        kfp_root = self.settings.workdir / "kfp"
        new = (
            [p for p in kfp_root.iterdir() if p not in job.before and p.is_dir()] if kfp_root.exists() else []
        )
        if rc != 0 or len(new) != 1:
            raise LoopError(f"the {job.label} pipeline failed (exit {rc}); its log: {job.log_path}")
        run_dir = new[0]
        run = LocalRun(
            "continuous_training", run_dir, time.perf_counter() - job.started, collect_tasks(run_dir)
        )
        self.record.links.append({"label": f"pipeline log ({job.label})", "href": job.log_path.name})
        self.record.links.append(
            {"label": f"KFP artifacts ({job.label})", "href": run_dir.resolve().as_uri()}
        )
        for task in run.tasks:
            self.console.print(f"    task {task}: done")
        return run

    def _serve(self) -> str:
        from freshrec.features.store import OnlineFeatures
        from freshrec.loop.replay import LookupTap
        from freshrec.serving.gateway import Gateway
        from freshrec.serving.server import ModelServer

        self._server = ModelServer(self.settings).start()
        # What the gateway looks up is kept (the features each page was ranked on): the frozen model and the
        # online learner are scored on those too, so the three are compared on the same inputs.
        self._lookup_tap = LookupTap(OnlineFeatures(self.settings).lookup_columns)
        self._gateway = Gateway(  # the replay sends as_of (event time)
            self.settings, replay=True, lookup=self._lookup_tap
        ).start()
        self.gateway_url = self._gateway.url
        return f"model server REST {self._server.rest_url}, gRPC {self._server.grpc_target}; gateway {self.gateway_url}"

    def _replay(self) -> str:
        import requests
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from freshrec.model.export import load_keras_model
        from freshrec.monitoring.alerts import AlertManager

        with warnings.catch_warnings():  # Evidently's and its web stack's import-time deprecation noise
            warnings.simplefilter("ignore")
            import evidently  # noqa: F401

        events = self.replay_events
        n_windows = max(1, math.ceil(len(events) / self.options.window_events))
        bounds = np.linspace(0, len(events), n_windows + 1).astype(int)
        self._windows = deque(
            (w, events.iloc[bounds[w] : bounds[w + 1]].reset_index(drop=True)) for w in range(n_windows)
        )
        self.alerts = AlertManager(self.settings.alerts, self.settings.state_dir)
        self.static = load_keras_model(self.repo.path(self.repo.stable()))
        self.monitor = self._make_monitor()
        self.history = self.bootstrap_events
        self.learner, self.source = self._make_learner()
        # The click feed: the activity state of every event so far; each page's events land in event time
        # and their rows go to the online store (the streaming feature job's part in a cluster).
        from freshrec.features.store import OnlineFeatures
        from freshrec.loop.replay import ClickFeed

        self._to_learn: list[pd.DataFrame] = []
        self.feed = ClickFeed(
            self.history, OnlineFeatures(self.settings).push, on_events=self._to_learn.append
        )
        # Keras/NumPy 2 deprecation chatter on every micro-batch says nothing to the person watching.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        self.http = requests.Session()
        self._stream_start = time.perf_counter()
        with Progress(
            TextColumn("[bold]replay"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
        ) as progress:
            self._progress = (progress, progress.add_task("", total=len(events)))
            while self._windows:
                drift_row = self._play_next_window()
                if self._job is None:
                    reason = self._retrain_reason(drift_row)
                    if reason:
                        self._start_retrain(reason)
                # The pipeline runs while the replay goes on; its canary needs the last reserved windows.
                if self._job is not None and (
                    self._job.proc.poll() is not None
                    or len(self._windows) <= self.options.canary_reserve_windows
                ):
                    version = self._finish_retrain()
                    if version is not None:
                        self._canary(version)
        self.freshness.wait(timeout_s=30)
        fresh = self.freshness.summary()
        self.record.freshness_s = [r["freshness_s"] for r in fresh["records"] if r["freshness_s"] is not None]
        labels = {v: name for name, v in self.repo.labels().items()}
        for row in self.record.versions:
            row["label"] = labels.get(row["version"], "")
        learner = self.learner.totals
        self.record.summary["online exports (passed guard / attempted)"] = (
            f"{learner.exports} / {learner.exports + learner.guard_failures}"
        )
        return (
            f"{len(events):,} events in {n_windows} windows; online learner: {learner.learned:,} learned, "
            f"{learner.exports} versions exported, {learner.guard_failures} guard failures"
        )

    def _play_next_window(self) -> dict[str, Any]:
        """One replay window: traffic → clicks → features → metrics → online learning → drift check."""
        from freshrec.features.training_set import build_training_frame
        from freshrec.model.export import spec_of
        from freshrec.online.learner import predict

        w, window = self._windows.popleft()
        row: dict[str, Any] = {"window_end": window["event_timestamp"].max().isoformat(), "n": len(window)}
        self._pace(window)
        learned_before = len(self.learner.metrics.all_pairs()[0])
        self._window_served: list[pd.DataFrame] = []  # the window's pages on their request-time features
        self._window_online: list[np.ndarray] = []  # the learner's scores of them, at request time
        self._scored_pages = 0  # how many of the window's pages _window_online holds scores for
        # 1. traffic: each user's impressions become ranking requests through the gateway, in request-time
        # order; before each, the events up to its time land (features, event log) and the learner learns
        # them every ``export_every_events`` (its guarded versions are served as soon as they are published)
        served = self._traffic(window)
        self._score_served_online()  # the pages served since the learner last learned
        self.feed.finish()
        self._learn_landed(force=True)
        labels_online, scores_online = self.learner.metrics.all_pairs()
        # 2. features as of each event, from strictly earlier events (history + this window)
        both = pd.concat([self.history, window], ignore_index=True)
        frame = build_training_frame(both, self.users, self.items).iloc[len(self.history) :]
        frame = frame.reset_index(drop=True)
        self.history = both
        self._stream_now = window["event_timestamp"].max()
        labels = frame["label"].to_numpy()
        static_scores = predict(self.static, frame, spec_of(self.static))
        # 3. quality on the same inputs: what was served, the frozen model and the online learner (as it was
        # at each request) on the features each page was ranked on; the exact point-in-time features (every
        # earlier event, the page's earlier impressions too) and the learner's own prequential score on the
        # features it learns from are context
        row.update(self._request_time_metrics(window, served))
        row.update(_metrics("static_exact", labels, static_scores))
        row.update(_metrics("online_learner", labels_online[learned_before:], scores_online[learned_before:]))
        # 4. the monitor: drift (a notice), data and served quality, the loop's parts → pages, notices
        keys = zip(frame["user_id"].astype(str), frame["item_id"].astype(str), strict=True)
        served_scores = np.array([served.get(k, (np.nan,))[0] for k in keys], dtype=np.float64)
        current = frame.assign(score=np.where(np.isnan(served_scores), static_scores, served_scores))
        drift_row = self._monitor_window(w, current, served)
        self.record.drift.append(drift_row)
        self.record.stream.append(row)
        progress, task = self._progress
        progress.update(
            task,
            advance=len(window),
            description=f"AUC static {row['static_auc']:.3f} online {row['online_auc']:.3f} "
            f"served {row['served_auc']:.3f} · drift {drift_row['drift_share']:.2f}"
            + (" · retrain pipeline running" if self._job is not None else ""),
        )
        self.record.save(self.report_dir / "run.json")
        return drift_row

    # ------------------------------------------------------------------------------------------ pieces
    def _pace(self, window: pd.DataFrame) -> None:
        """With ``speedup``, wait until the window's stream time comes round on the wall clock."""
        if not self.options.speedup:
            return
        first = self.replay_events["event_timestamp"].min()
        elapsed_stream = (window["event_timestamp"].min() - first).total_seconds()
        wait = elapsed_stream / self.options.speedup - (time.perf_counter() - self._stream_start)
        if wait > 0:
            time.sleep(wait)

    def _traffic(self, window: pd.DataFrame) -> dict[tuple[str, str], tuple[float, int, str]]:
        """Ranking requests for the window's impressions: per user, pages of ``page_size`` items.

        Returns (user, item) → (score, model version, arm). Each request carries ``as_of`` (the page's
        first impression, in event time) so the prediction log joins with the historical clicks.

        A page's clicks land before the user's next page is asked for: the user's activity row is pushed
        to the online store as of that request (what a streaming feature job does in a cluster), so a
        rating session's later pages see its earlier ones. Item rows follow with the learner, per window.
        """
        from freshrec.loop.replay import pages_of, request_time_frame

        served: dict[tuple[str, str], tuple[float, int, str]] = {}
        latencies = self.record.latency_ms.setdefault("gateway rank (client, HTTP)", [])
        self.feed.start_window(window)
        for page in pages_of(window, self.options.page_size):
            self.feed.advance(page.as_of)  # the events before the request have landed
            self._learn_landed()
            body = {
                "user_id": page.user_id,
                "item_ids": page.events["item_id"].astype(str).tolist(),
                "as_of": page.as_of.isoformat(),
            }
            start = time.perf_counter()
            resp = self.http.post(f"{self.gateway_url}/v1/rank", json=body, timeout=10)
            latencies.append((time.perf_counter() - start) * 1000)
            if resp.status_code != 200:
                log.warning(
                    "rank for user %s answered %s: %s", page.user_id, resp.status_code, resp.text[:200]
                )
                continue
            out = resp.json()
            answers = self._lookup_tap.take()
            if answers:  # the last lookup is this request's
                self._window_served.append(request_time_frame(page.events, answers[-1]))
            for item in out["items"]:
                served[(page.user_id, str(item["item_id"]))] = (
                    float(item["score"]),
                    int(out["model_version"]),
                    out["arm"],
                )
        self._gateway.predlog.flush()  # the canary analysis reads the log right after the window
        return served

    def _learn_landed(self, force: bool = False) -> None:
        """Append the landed events to the event log and let the learner learn them, once there are
        ``export_every_events`` of them (``force``: whatever has landed).

        One change to production at a time: while a canary runs, the learner keeps learning but does not
        export (an export would move the stable label under the canary's comparison).
        """
        from freshrec.data.ingest import ingest_frame

        landed = sum(len(b) for b in self._to_learn)
        if landed == 0 or (not force and landed < self.options.export_every_events):
            return
        batch = pd.concat(self._to_learn, ignore_index=True)
        self._to_learn.clear()
        self._landed += 1
        ingest_frame(batch, self.settings, source=f"replay:{self.options.run_id}:{self._landed}")
        self.learner.repository = None if self._in_canary else self.repo
        self._score_served_online()  # the learner as it was when those pages were served
        # the replay appended the events synchronously: everything to learn is there, no need to wait
        self.learner.run(self.source, until_idle=True, idle_timeout_s=0.0)
        # A window's last, smaller batch: exported too (once the guard has enough events to judge), so the
        # next window's first pages are not served by a version that lacks it.
        learner = self.learner
        attempted = learner.exports[-1].events_learned if learner.exports else self._learned_at_start
        if (
            learner.repository is not None
            and learner.superseded is None
            and learner.totals.learned - attempted >= self.settings.online.guard_min_events
        ):
            learner.maybe_export()

    def _score_served_online(self) -> None:
        """Score the pages served since the learner last changed with the learner's model as it is now,
        i.e. as it was at their requests (it changes only when it learns), on their request-time features.

        The learner learns these pages' events later (test-then-train); with ``learn_on_served_features``
        it learns them on these same features.
        """
        from freshrec.online.learner import predict

        pending = self._window_served[self._scored_pages :]
        if not pending:
            return
        frame = pd.concat(pending, ignore_index=True)
        self._window_online.append(predict(self.learner.model, frame, self.learner.spec))
        self._scored_pages = len(self._window_served)
        featurizer = self.learner.featurizer
        if hasattr(featurizer, "add"):  # ServedFeaturizer: learn these events on these features
            featurizer.add(frame)

    def _request_time_metrics(
        self, window: pd.DataFrame, served: dict[tuple[str, str], tuple[float, int, str]]
    ) -> dict[str, float]:
        """Served, static and online AUC/logloss of the window on the impressions that were served, all
        three on the features the gateway looked up for them at request time."""
        from freshrec.model.export import spec_of
        from freshrec.online.learner import predict

        if not self._window_served:
            none = np.zeros(0)
            return {k: v for p in ("served", "static", "online") for k, v in _metrics(p, none, none).items()}
        frame = pd.concat(self._window_served, ignore_index=True)
        online = np.concatenate(self._window_online)
        keys = list(zip(frame["user_id"].astype(str), frame["item_id"].astype(str), strict=True))
        mask = np.array([k in served for k in keys])
        frame, online = frame[mask].reset_index(drop=True), online[mask]
        labels = frame["label"].to_numpy()
        served_scores = np.array([served[k][0] for k, m in zip(keys, mask, strict=True) if m])
        static = predict(self.static, frame, spec_of(self.static))
        return {
            **_metrics("served", labels, served_scores),
            **_metrics("static", labels, static),
            **_metrics("online", labels, online),
        }

    def _make_learner(self) -> tuple[Any, Any]:
        """The online learner from the stable version, following the event log after the bootstrap part."""
        from freshrec.online.freshness import FreshnessTracker
        from freshrec.online.learner import build_learner
        from freshrec.online.sources import build_source

        self.freshness = FreshnessTracker(self._server.rest_url, self.settings.model.name)
        # A guarded export every ``export_every_events`` learned events: what is served is at most that
        # many events behind what the learner knows (the replay's stream time is days per wall minute).
        # The click feed writes the activity rows (one writer); the learner's features are the same code
        # (ActivityState) on the same events.
        learner = build_learner(
            self.settings, on_export=self._on_export, history=self.history, push_features=False
        )
        if self.options.learn_on_served_features:
            from freshrec.loop.replay import ServedFeaturizer

            learner.featurizer = ServedFeaturizer(learner.featurizer)
        self._learned_at_start = learner.totals.learned
        learner.metrics.keep_all = True  # every (label, score) pair, for exact per-window AUC in the report
        source = build_source(
            self.settings, "eventlog", start_after=self.bootstrap_events["event_timestamp"].max()
        )
        return learner, source

    def _on_export(self, rec: Any) -> None:
        # Local mode: the server hears of the publish and loads the version now (it polls too, as TF
        # Serving does; the notification only saves the rest of a poll interval).
        self._server.manager.notify(wait=True)
        self.freshness.on_export(rec)
        self._note_version(rec.version, "online learner")

    def _make_monitor(self) -> Any:
        """The monitor of the replay: reference, calibrated thresholds, from the production model's data."""
        from freshrec.features.training_set import build_training_frame
        from freshrec.model.export import spec_of
        from freshrec.monitoring.monitor import monitor_for_stream
        from freshrec.online.learner import predict

        # Features over the whole training history; the reference is its most recent part, the drift
        # thresholds come from the windows before it (see freshrec.monitoring.drift.calibration).
        history = build_training_frame(self.bootstrap_events, self.users, self.items)
        # Prediction drift: the production model's scores on its training window vs what was served.
        history["score"] = predict(self.static, history, spec_of(self.static))
        self.drift_columns = _drift_columns(spec_of(self.static))
        self._published: tuple[int | None, float] = (self.repo.stable(), time.time())
        self._pages_open: set[str] = set()
        self._pipeline_events: list[Any] = []  # failures of the automation, reported at the next window
        return monitor_for_stream(
            self.settings,
            history,
            self.drift_columns,
            reference_rows=self.options.reference_events,
            window_rows=self.options.window_events,
            growth_origin=self.bootstrap_events["event_timestamp"].min(),
            out_dir=self.report_dir / "monitor",
            html=True,
        )

    def _monitor_window(
        self, w: int, current: pd.DataFrame, served: dict[tuple[str, str], tuple[float, int, str]]
    ) -> dict[str, Any]:
        """Run the monitor on one window, sync the alerts, and return the window's row of the record."""
        from freshrec.monitoring.monitor import ServingState, guard_failures_in_a_row, served_versions

        stable = self.repo.stable()
        if stable != self._published[0]:
            self._published = (stable, time.time())
        learned = self.learner.totals.newest_learned_time
        report = self.monitor.observe(
            w,
            current,
            now=time.time(),
            progress={
                "stream_features": self.feed.newest,
                "online_learner": pd.Timestamp(learned) if learned else None,
            },
            serving=ServingState(
                published_version=stable,
                published_at=self._published[1],
                served_versions=served_versions(self._server.rest_url, self.settings.model.name),
                answered_versions=sorted({v for _, v, arm in served.values() if arm == "stable"}),
            ),
            guard_failures_in_a_row=guard_failures_in_a_row(self.learner.exports),
            events=self._pipeline_events,
        )
        self._pipeline_events = []
        links = {"report": Path(report.report).resolve().as_uri()} if report.report else {}
        self.alerts.sync(self.settings.model.name, report.signals, links=links)
        pages = {s.name for s in report.pages}
        self.record.pages.extend(
            {
                "window_end": current["event_timestamp"].max().isoformat(),
                "alert": s.name,
                "summary": s.summary,
            }
            for s in report.pages
            if s.name not in self._pages_open  # a page counts once, when it opens
        )
        self._pages_open = pages
        d = report.drift
        return {
            "window_end": current["event_timestamp"].max().isoformat(),
            "drift_share": float(d.drift_share) if d else 0.0,
            "drift_score": d.dataset_score if d else None,
            "drift_threshold": d.dataset_threshold if d else None,
            "verdict": d.verdict if d else "",
            "drifted": d.drifted if d else [],
            "alerted": bool(pages),
            "pages": ", ".join(sorted(pages)),
            "notices": ", ".join(s.name for s in report.notices),
            "retrain_reason": report.retrain_reason,
            "estimated_logloss": report.estimate.logloss if report.estimate else None,
            "served_logloss": report.served.logloss if report.served else None,
            "report": str(Path(report.report).relative_to(self.report_dir))
            if report.report and Path(report.report).is_relative_to(self.report_dir)
            else "",
        }

    def _retrain_reason(self, drift_row: dict[str, Any]) -> str | None:
        """The trigger policy of the loop: drift or a data-quality failure, at most ``max_retrains``."""
        if (
            not self.options.retrain
            or self._retrains >= self.options.max_retrains
            or self._in_canary
            or self._job is not None
        ):
            return None
        # Like an alert's `for:` clause: only a drift notice that holds for N windows in a row starts a
        # pipeline (the monitor gives no retraining reason for broken data: that pages instead).
        recent = self.record.drift[-self.options.drift_windows_to_retrain :]
        if len(recent) < self.options.drift_windows_to_retrain or not all(
            d["retrain_reason"] for d in recent
        ):
            return None
        if not self._windows:
            return None  # no traffic left to run a canary on
        return drift_row["retrain_reason"]

    def _start_retrain(self, reason: str) -> None:
        """Start the retraining pipeline in the background (it pushes a candidate, labels untouched)."""
        self._retrains += 1
        self.console.print(f"[bold yellow]retraining[/bold yellow]: {reason}; the replay goes on meanwhile")
        self._job = self._start_pipeline(f"retrain-{self._retrains}", rollout_mode="none")
        self._job.reason = reason
        self._job.windows_left = len(self._windows)

    def _finish_retrain(self) -> int | None:
        """Wait for the retraining pipeline (if still running); its pushed version or None."""
        job = self._job
        assert job is not None
        if job.proc.poll() is None:
            self.console.print(
                f"  waiting for the retraining pipeline: the last {len(self._windows)} window(s) are its "
                "canary's traffic"
            )
        try:
            run = self._finish_pipeline(job)
        finally:
            self._job = None
        version = run.pushed_version
        entry: dict[str, Any] = {
            "time": _now(),
            "reason": job.reason,
            "seconds": round(run.duration_s, 1),
            "windows_meanwhile": job.windows_left - len(self._windows),
            "version": version,
        }
        self.record.retrains.append(entry)
        self.console.print(
            f"  retraining pipeline done in {run.duration_s:.0f} s, {entry['windows_meanwhile']} window(s) "
            "replayed meanwhile"
        )
        if version is None:
            entry.update(
                outcome="not pushed", detail="the blessing or data-quality gate stopped the pipeline"
            )
            self.console.print("  the pipeline's gates stopped the candidate: nothing to roll out")
            return None
        self._note_version(version, "pipeline (retrain)")
        entry["outcome"] = "canary"
        return version

    def _canary(self, version: int) -> None:
        """Roll ``version`` out by canary on the live replay traffic; promote or roll back.

        The controller runs the plan's steps; each of its waits plays the next replay window (a virtual
        clock advances by the wait), so the analysis sees real traffic and real clicks, in event time.
        """
        from freshrec.rollout.controller import local_controller
        from freshrec.rollout.plan import CanaryPlan

        unit = 60.0  # virtual seconds per replay window
        # A replay shows each user the items they really rated, whatever the model: CTR per arm then only
        # measures which users the sticky split sent where, so the CTR check is left out here (it stays in
        # the default plan for live traffic, where the model chooses what is shown).
        analysis = {"checks": ["error_rate", "latency_p99", "score_shift", "logloss"]}
        plan = CanaryPlan.model_validate(
            {
                "steps": [
                    {"set_weight": 20},
                    {"pause": {"duration_s": unit}},
                    {"analysis": analysis},
                    {"set_weight": 50},
                    {"pause": {"duration_s": unit}},
                    {"analysis": analysis},
                    {"set_weight": 100},
                ]
            }
        )
        rollout = self.settings.rollout.model_copy(
            update={
                "min_clicks": self.options.canary_min_clicks,
                "min_requests": self.options.canary_min_requests,
                "min_predictions": self.options.canary_min_clicks,
                "click_window_s": 30 * 86400.0,  # a window spans days of event time
                "analysis_interval_s": unit,
                "max_inconclusive_wait_s": unit * self.options.canary_max_wait_windows,
            }
        )
        settings = self.settings.model_copy(update={"rollout": rollout})
        clock = [0.0]

        def sleep(seconds: float) -> None:
            if not self._windows:
                raise _ReplayEnded("the replay ended before the canary analysis could conclude")
            clock[0] += seconds
            self._play_next_window()

        def on_step(entry: Any) -> None:
            self.record.canary.append(
                {
                    "time": self._stream_now.isoformat(),
                    "rollout": f"v{version}",
                    "step": entry.action,
                    "weight": entry.weight,
                    "verdict": entry.verdict,
                    "reasons": "; ".join(entry.reasons),
                }
            )
            if entry.action == "analysis":
                self.console.print(f"  canary v{version}: analysis at {entry.weight}%: {entry.verdict}")
            elif entry.action in ("promote", "rollback"):  # the canary's weight is back at 0 by now
                self.console.print(f"  canary v{version}: {entry.action}")

        controller = local_controller(
            settings,
            plan,
            gateway_url=self._gateway.admin_url,
            model_server_url=self._server.rest_url,
            since=(self._stream_now + pd.Timedelta(microseconds=1)).to_pydatetime(),
            report_dir=self.report_dir / "canary",
            clock=lambda: clock[0],
            sleep=sleep,
            progress=on_step,
        )
        self._in_canary = True
        try:
            outcome = controller.run(version).outcome
        except _ReplayEnded as exc:  # the controller rolled back already
            outcome = f"rolled_back ({exc})"
        finally:
            self._in_canary = False
        self.record.retrains[-1]["outcome"] = outcome
        self.console.print(f"[bold]canary v{version}: {outcome}[/bold]")
        if outcome == "rolled_back":  # the analysis failed the candidate (not: the replay ran out)
            from freshrec.monitoring.monitor import PipelineEvent

            reasons = "; ".join(c["reasons"] for c in self.record.canary[-3:] if c.get("reasons"))
            self._pipeline_events.append(
                PipelineEvent(
                    kind="canary_aborted", detail=f"canary v{version}: {outcome}. {reasons}", version=version
                )
            )
        if outcome == "promoted":
            # The learner starts over from the promoted model (its seen-set keeps the counts exact).
            self.learner = self._make_learner()[0]

    def _note_version(self, version: int, source: str) -> None:
        meta = self.repo.metadata(version) if hasattr(self, "repo") else {}
        metrics = meta.get("metrics", {}) or {}
        self.record.versions.append(
            {
                "version": version,
                "source": source,
                "label": "",
                "auc": metrics.get("auc"),
                "logloss": metrics.get("logloss"),
                "created_at": meta.get("created_at"),
            }
        )
        if meta.get("explanation"):  # the evaluate step's feature attributions (freshrec.model.explain)
            self.record.explanations.append({**meta["explanation"], "version": version})

    def _shutdown(self) -> None:
        if self._job is not None:  # stopped mid-replay: the background pipeline goes too
            self.console.print(f"  stopping the {self._job.label} pipeline (log → {self._job.log_path})")
            _stop_pipeline(self._job)
            self._job = None
        for svc in (self._gateway, self._server):
            if svc is not None:
                try:
                    svc.stop()
                except Exception as exc:
                    log.warning("stopping %s: %s", type(svc).__name__, exc)

    def _summarise(self) -> None:
        # What production serves now comes first (the report's summary table is the top of the page).
        head: dict[str, Any] = {}
        if hasattr(self, "repo"):  # set once the bootstrap pushed a model
            labels = self.repo.labels()
            head["stable version"] = f"v{labels['stable']}" if labels.get("stable") else "none"
            head["canary version"] = f"v{labels['canary']}" if labels.get("canary") else "none"
        s = {**head, **{k: v for k, v in self.record.summary.items() if k not in head}}
        s["status"] = self.record.status
        if self.record.stream:
            df = pd.DataFrame(self.record.stream)
            for variant, name in SUMMARY_VARIANTS.items():
                col = f"{variant}_auc"
                if col in df:
                    s[f"mean window AUC, {name}"] = round(float(df[col].mean()), 4)
            means = {v: float(df[f"{v}_auc"].mean()) for v in SUMMARY_VARIANTS if f"{v}_auc" in df}
            if len(means) == len(SUMMARY_VARIANTS):
                # What the exact figures have that a request cannot: the page's own earlier impressions in
                # the features (static exact − static); in the model, those and every event learned since
                # the version serving the request (the learner's prequential − online at request time).
                s["AUC lost to request-time features (static exact − static)"] = round(
                    means["static_exact"] - means["static"], 4
                )
                s["AUC lost to model age (learner's prequential − online)"] = round(
                    means["online_learner"] - means["online"], 4
                )
        s["pages"] = len(self.record.pages)
        s["notices (windows with one)"] = sum(1 for d in self.record.drift if d.get("notices"))
        s["windows with drift (retraining reason)"] = sum(
            1 for d in self.record.drift if d.get("retrain_reason")
        )
        if self.record.freshness_s:
            fresh = np.asarray(self.record.freshness_s)
            s["freshness p50 / p95 (s)"] = f"{np.percentile(fresh, 50):.1f} / {np.percentile(fresh, 95):.1f}"
        for name, values in self.record.latency_ms.items():
            if values:
                s[f"{name} p50 / p99 (ms)"] = (
                    f"{np.percentile(values, 50):.1f} / {np.percentile(values, 99):.1f}"
                )
        s["canary outcomes"] = ", ".join(str(r.get("outcome")) for r in self.record.retrains) or "none"
        s["retrainings"] = len(self.record.retrains)
        s["model versions"] = len(self.record.versions)
        self.record.summary = s


# The stream's quality columns in the summary: served, static and online on the same request-time features
# first (the comparison), then the context: the frozen model on exact point-in-time features and the
# learner's own prequential score on the features it learns from.
SUMMARY_VARIANTS = {
    "served": "served",
    "static": "static",
    "online": "online",
    "static_exact": "static (exact features)",
    "online_learner": "online (learner's prequential)",
}


# What the serve and replay stages import (the heavy ones first); `_preload` imports them ahead of time.
PRELOAD_MODULES = (
    "tensorflow",
    "evidently",
    "feast",
    "sklearn.metrics",
    "freshrec.features.store",
    "freshrec.serving.server",
    "freshrec.serving.gateway",
    "freshrec.model.export",
    "freshrec.online.learner",
    "freshrec.monitoring.drift.check",
    "freshrec.monitoring.alerts.manager",
    "freshrec.rollout.controller",
)


def _preload() -> None:
    """Import :data:`PRELOAD_MODULES` (in a thread while the main one waits for the bootstrap pipeline).

    A module that fails to import is left for the stage that needs it to fail with its own error. The
    warnings filter is process-wide: this runs only while the main thread waits on the child process.
    """
    import importlib

    with warnings.catch_warnings():  # Evidently's and its web stack's import-time deprecation noise
        warnings.simplefilter("ignore")
        for name in PRELOAD_MODULES:
            try:
                importlib.import_module(name)
            except Exception as exc:  # the stage importing it reports the error
                log.debug("preloading %s failed: %s", name, exc)


class _ReplayEnded(CanaryStopped):
    """No replay window is left to give a canary traffic."""


@dataclass
class _PipelineJob:
    """A ``continuous_training`` run in a child process."""

    label: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]
    before: set[Path]  # the kfp run directories that existed before it started
    started: float
    reason: str = ""
    windows_left: int = 0  # replay windows left when it started


def _stop_pipeline(job: _PipelineJob) -> None:
    """Terminate a pipeline child (its running task dies with it) and close its log."""
    import signal

    def kill(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # the whole group has exited already
            os.killpg(job.proc.pid, sig)

    if job.proc.poll() is None:
        kill(signal.SIGTERM)
        try:
            job.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            kill(signal.SIGKILL)
            job.proc.wait()
    job.log.close()


def _features_summary(run: Any) -> str:
    """What the pipeline's features task did (Feast apply + materialize), from its Markdown report."""
    import re

    path = run.tasks["features"].artifacts.get("report") if "features" in run.tasks else None
    if path is None or not Path(path).is_file():
        return "features task: no report"
    text = Path(path).read_text()
    applied = re.search(r"(\d+) objects applied", text)
    views = re.findall(r"^- `([^`]+)`: (.+)$", text, flags=re.MULTILINE)
    return f"Feast: {applied.group(1) if applied else '?'} objects applied, materialized " + ", ".join(
        f"{name} ({how})" for name, how in views
    )


def _drift_columns(spec: Any) -> dict[str, str]:
    """The model's input features as drift columns (ids left out: their drift means nothing)."""
    from freshrec.monitoring.drift import resolve_columns

    return resolve_columns(spec, pd.DataFrame())


def served_pairs(
    window: pd.DataFrame, served: dict[tuple[str, str], tuple[float, int, str]]
) -> tuple[np.ndarray, np.ndarray]:
    keys = list(zip(window["user_id"].astype(str), window["item_id"].astype(str), strict=True))
    mask = np.array([k in served for k in keys])
    scores = np.array([served[k][0] for k in keys if k in served], dtype=np.float64)
    return window["label"].to_numpy()[mask], scores


def _metrics(prefix: str, labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    from freshrec.training.metrics import auc, logloss

    if len(labels) == 0 or len(set(labels.tolist())) < 2:
        return {f"{prefix}_auc": float("nan"), f"{prefix}_logloss": float("nan")}
    return {f"{prefix}_auc": auc(labels, scores), f"{prefix}_logloss": logloss(labels, scores)}


def _span(events: pd.DataFrame) -> str:
    if events.empty:
        return "empty"
    return f"{events['event_timestamp'].min():%Y-%m-%d} → {events['event_timestamp'].max():%Y-%m-%d}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@contextmanager
def _workdir_lock(workdir: Path) -> Iterator[None]:
    """One loop per workdir at a time: a second `freshrec run` fails fast instead of corrupting state."""
    path = workdir / ".run.lock"
    with open(path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise LoopError(f"another freshrec run is using {workdir} (lock {path})") from exc
        fh.write(f"{uuid.uuid4()}\n")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
