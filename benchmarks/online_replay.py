"""Replay real streams in time order: static bootstrap vs periodic full retraining vs the online learner.

Protocol (per dataset):

- events sorted by time; the first ``bootstrap_fraction`` (50%) train the bootstrap model (a DCN-V2 with
  hashed ids, trained from scratch with early stopping on its last 10% by time); the rest is the stream;
- every variant is scored *prequentially* on the stream, on the very same feature rows (profiles + activity
  features as of each event, computed incrementally by the learner's featurizer from strictly earlier
  events), so only the model parameters differ:

  (a) ``static``: the bootstrap model, never updated;
  (b) ``daily``: full retraining from scratch on all events before each retrain boundary. Retraining every
      day is too expensive on 2 shared cores, so boundaries are every ``K`` days with ``K`` chosen to give at
      most ``max_retrains`` retrains over the stream, each for ``retrain_epochs`` epochs (early stopping on
      the last 10% by time); events before the first boundary use the bootstrap model (which *is* the full
      retrain at the stream start). This is an upper bound on what a nightly job of the same budget gets;
  (c) ``online``: :class:`freshrec.online.learner.OnlineLearner` with the default ``OnlineSettings``
      (test-then-train on slices of ``train_batch`` events of each micro-batch; embedding tables with ``embedding_optimizer`` at
      ``embedding_learning_rate``, dense layers with Adam at ``learning_rate``);

- label delay cost: the online learner again with ``label_delay_s`` of one hour (an impression is learned
  only once an hour of event time has passed);
- freshness: events are XADDed to a real Redis stream at a steady rate while the learner consumes them and
  exports a version every few seconds to a repository served by the real local ``ModelServer``; freshness
  is the time from an event's XADD to the server reporting the version that learned it AVAILABLE.

A plot of AUC per stream window (PNG) goes to ``.freshrec/benchmarks/`` (not committed).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.results import Row
from freshrec.training.metrics import auc, logloss

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DATASETS = (REPO / ".." / "shared" / "datasets").resolve()
OUT_DIR = REPO / ".freshrec" / "benchmarks"


def _model_settings():
    from freshrec.config import ModelSettings

    return ModelSettings(
        embedding_dim=16, id_hash_buckets=20_000, deep_units=[64, 32], cross_layers=2, dropout=0.1
    )


def _train(frame: pd.DataFrame, spec, epochs: int, seed: int = 42):
    from freshrec.config import TrainingSettings
    from freshrec.training import train

    n = len(frame)
    cut = int(n * 0.9)
    ts = TrainingSettings(
        epochs=epochs, batch_size=512, learning_rate=1e-3, early_stopping_patience=1, seed=seed
    )
    return train(frame.iloc[:cut], frame.iloc[cut:], spec, _model_settings(), ts).model


class _Recorder:
    """Wraps the featurizer to keep every featurized stream row (the rows all variants are scored on)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.frames: list[pd.DataFrame] = []

    @property
    def activity(self):
        return self.inner.activity

    def __call__(self, events: pd.DataFrame) -> pd.DataFrame:
        frame = self.inner(events)
        self.frames.append(frame)
        return frame


def _run_online(model_path: Path, users, items, boot_events, stream, online_settings, record: bool):
    from freshrec.features.activity import ActivityState
    from freshrec.model.export import load_keras_model
    from freshrec.online.learner import Featurizer, OnlineLearner
    from freshrec.online.sources import Batch

    activity = ActivityState()
    activity.update(boot_events)
    featurizer = Featurizer(users, items, activity)
    feat = _Recorder(featurizer) if record else featurizer
    learner = OnlineLearner(
        load_keras_model(model_path),
        load_keras_model(model_path),
        feat,
        online_settings,
        keep_all_predictions=True,
        validate=False,
    )
    step = online_settings.micro_batch
    start = time.perf_counter()
    for i in range(0, len(stream), step):
        learner.step(Batch(stream.iloc[i : i + step], None, np.zeros(0)))
    elapsed = time.perf_counter() - start
    return learner, (feat.frames if record else None), elapsed


def replay(
    dataset: str,
    bootstrap_fraction: float = 0.5,
    max_stream: int | None = None,
    max_retrains: int = 5,
    bootstrap_epochs: int = 6,
    retrain_epochs: int = 3,
    label_delay_s: float | None = 3600.0,
    window_events: int = 2000,
    delay_events: int | None = None,
    datasets_dir: Path = DATASETS,
) -> dict[str, Any]:
    """Replay one dataset; returns the figures, per-window AUCs and timings."""
    from freshrec.config import OnlineSettings
    from freshrec.data.datasets import load_dataset, time_split
    from freshrec.features.activity import ITEM_ACTIVITY, USER_ACTIVITY, ActivityState
    from freshrec.features.training_set import build_training_frame
    from freshrec.model.export import export_model
    from freshrec.model.spec import FeatureSpec
    from freshrec.online.learner import predict

    t0 = time.perf_counter()
    ds = load_dataset(dataset, datasets_dir)
    boot, stream = time_split(ds.events, (bootstrap_fraction, 1 - bootstrap_fraction))
    if max_stream is not None:
        stream = stream.iloc[:max_stream].reset_index(drop=True)
    everything = pd.concat([boot, stream], ignore_index=True)
    full = build_training_frame(everything, ds.users, ds.items)
    boot_frame = full.iloc[: len(boot)].reset_index(drop=True)
    spec = FeatureSpec.for_description(
        ds.description, id_hash_buckets=_model_settings().id_hash_buckets, frame=boot_frame
    )
    model = _train(boot_frame, spec, bootstrap_epochs)
    tmp = Path(tempfile.mkdtemp(prefix="online-replay-"))
    model_path = export_model(model, tmp / "bootstrap")
    t_boot = time.perf_counter() - t0
    seen_users = set(boot["user_id"])
    new_user_share = float((~stream["user_id"].isin(seen_users)).mean())

    online_settings = OnlineSettings()
    learner, frames, online_s = _run_online(
        model_path, ds.users, ds.items, boot, stream, online_settings, True
    )
    rows = pd.concat(frames, ignore_index=True)
    y_on, p_on = learner.metrics.all_pairs()
    y_st, p_st = learner.serving_metrics.all_pairs()
    assert np.array_equal(y_on, y_st) and len(rows) == len(y_on)

    # What fresh activity features are worth: the static model on features frozen at the bootstrap's end
    # (what serving would see without the learner's Feast pushes or a re-materialization).
    stale = rows.copy()
    frozen = ActivityState()
    frozen.update(boot)
    for entity, names in (("user", USER_ACTIVITY), ("item", ITEM_ACTIVITY)):
        got = (frozen.user_rows if entity == "user" else frozen.item_rows)(
            rows[f"{entity}_id"].astype(str), rows["event_timestamp"]
        )
        for col in names:
            stale[col] = got[col].to_numpy()
    p_stale = predict(model, stale, spec)

    # (b) periodic full retraining, scored on the same rows.
    t1 = time.perf_counter()
    ts = rows["event_timestamp"]
    span_days = max((ts.max() - ts.min()).total_seconds() / 86400.0, 1e-9)
    every_days = max(1, math.ceil(span_days / (max_retrains + 1)))
    start_day = ts.min().floor("D")
    boundaries = [start_day + pd.Timedelta(days=every_days * k) for k in range(1, max_retrains + 1)]
    boundaries = [b for b in boundaries if b < ts.max()]
    # Before the first boundary: the bootstrap model (it is the full retrain at the stream start).
    p_daily = np.array(predict(model, rows, spec))
    retrains = 0
    for k, b in enumerate(boundaries):
        history = full[full["event_timestamp"] < b]
        retrained = _train(history.reset_index(drop=True), spec, retrain_epochs, seed=43 + k)
        end = boundaries[k + 1] if k + 1 < len(boundaries) else ts.max() + pd.Timedelta(seconds=1)
        mask = ((ts >= b) & (ts < end)).to_numpy()
        p_daily[mask] = predict(retrained, rows[mask], spec)
        retrains += 1
    daily_s = time.perf_counter() - t1

    delay = None
    if label_delay_s:
        delayed_settings = OnlineSettings(label_delay_s=label_delay_s)
        k = min(len(stream), delay_events or len(stream))
        delayed, _, _ = _run_online(
            model_path, ds.users, ds.items, boot, stream.iloc[:k], delayed_settings, False
        )
        y_d, p_d = delayed.metrics.all_pairs()
        delay = {
            "label_delay_s": label_delay_s,
            "events": k,
            "auc": auc(y_d, p_d),
            "logloss": logloss(y_d, p_d),
            "auc_no_delay": auc(y_on[:k], p_on[:k]),
            "auc_static": auc(y_st[:k], p_st[:k]),
        }

    windows = []
    for i in range(0, len(y_on), window_events):
        sl = slice(i, i + window_events)
        windows.append(
            {
                "end": str(ts.iloc[min(i + window_events, len(ts)) - 1]),
                "static": auc(y_st[sl], p_st[sl]),
                "daily": auc(y_on[sl], p_daily[sl]),
                "online": auc(y_on[sl], p_on[sl]),
            }
        )
    return {
        "dataset": dataset,
        "bootstrap_events": len(boot),
        "stream_events": len(stream),
        "new_user_share": new_user_share,
        "auc": {
            "static": auc(y_st, p_st),
            "daily": auc(y_on, p_daily),
            "online": auc(y_on, p_on),
            "static_stale_features": auc(y_on, p_stale),
        },
        "logloss": {
            "static": logloss(y_st, p_st),
            "daily": logloss(y_on, p_daily),
            "online": logloss(y_on, p_on),
        },
        "delay": delay,
        "retrains": retrains,
        "retrain_every_days": every_days,
        "retrain_epochs": retrain_epochs,
        "online_events_per_s": len(stream) / online_s,
        "load_avg": os.getloadavg()[0],
        "online_settings": online_settings.model_dump(
            include={
                "micro_batch",
                "train_batch",
                "learning_rate",
                "embedding_optimizer",
                "embedding_learning_rate",
            }
        ),
        "seconds": {"bootstrap": t_boot, "online": online_s, "daily": daily_s},
        "windows": windows,
        "model_path": str(model_path),
    }


def plot(results: list[dict[str, Any]], path: Path) -> Path:
    """AUC per stream window for each variant, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 4), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        w = pd.DataFrame(res["windows"])
        x = pd.to_datetime(w["end"])
        for name in ("static", "daily", "online"):
            ax.plot(x, w[name], marker=".", label=f"{name} ({res['auc'][name]:.4f})")
        ax.set_title(f"{res['dataset']}: prequential AUC per window")
        ax.set_ylabel("AUC")
        ax.legend()
        fig.autofmt_xdate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def freshness(
    dataset: str = "movielens-100k",
    model_path: Path | None = None,
    seconds: float = 60.0,
    rate: float = 300.0,
    export_every_s: float = 5.0,
    redis_url: str = "redis://127.0.0.1:6379/0",
    datasets_dir: Path = DATASETS,
) -> dict[str, Any]:
    """Event → served latency against the real local ModelServer, with events arriving on a Redis stream."""
    import uuid

    import redis

    from freshrec.config import load_settings
    from freshrec.data.datasets import load_dataset, time_split
    from freshrec.features.activity import ActivityState
    from freshrec.model.export import load_keras_model
    from freshrec.model.repository import ModelRepository
    from freshrec.online.freshness import FreshnessTracker
    from freshrec.online.learner import Featurizer, OnlineLearner
    from freshrec.online.sources import RedisStreamSource, publish_events
    from freshrec.serving.server import ModelServer

    workdir = Path(tempfile.mkdtemp(prefix="online-fresh-"))
    stream_key = f"freshrec:bench:{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        workdir=workdir,
        serving={"poll_interval_s": 0.5},
        online={
            "redis_url": redis_url,
            "stream": stream_key,
            "export_every_events": 10**9,
            "export_every_s": export_every_s,
            "guard_min_events": 100,
            "micro_batch": 256,
        },
    )
    ds = load_dataset(dataset, datasets_dir)
    boot, stream = time_split(ds.events, (0.5, 0.5))
    repo = ModelRepository(settings.models_dir, settings.model.name)
    v = repo.publish(model_path, {"source": "batch"})
    repo.set_label("stable", v)
    client = redis.Redis.from_url(redis_url)
    n = min(len(stream), int(seconds * rate))
    stream = stream.iloc[:n].reset_index(drop=True)
    activity = ActivityState()
    activity.update(boot)
    with ModelServer(settings, rest_port=0, grpc_port=0) as server:
        tracker = FreshnessTracker(server.rest_url, settings.model.name, poll_s=0.05, timeout_s=60)
        learner = OnlineLearner(
            load_keras_model(model_path),
            load_keras_model(model_path),
            Featurizer(ds.users, ds.items, activity),
            settings.online,
            repository=repo,
            parent_version=v,
            on_export=tracker.on_export,
        )
        source = RedisStreamSource(client, stream_key, "bench", "learner")

        def produce() -> None:
            chunk = max(1, int(rate / 10))
            for i in range(0, n, chunk):
                publish_events(client, stream_key, stream.iloc[i : i + chunk])
                time.sleep(chunk / rate)

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        try:
            learner.run(source, max_events=n, idle_timeout_s=1.0)
            producer.join()
            tracker.wait(60)
        finally:
            client.delete(stream_key)
    out = tracker.summary()
    out["events"] = n
    out["rate"] = rate
    out["exports"] = learner.totals.exports
    out["guard_failures"] = learner.totals.guard_failures
    return out


QUICK_PLANS = {
    "movielens-100k": {
        "max_stream": 1500,
        "max_retrains": 1,
        "bootstrap_epochs": 1,
        "retrain_epochs": 1,
        "label_delay_s": None,
        "window_events": 500,
    }
}
FULL_PLANS = {
    # Sized for 2 CPU cores shared with seven other jobs: the stream is the first 15,000 (100k) / 20,000
    # (1M tail) events after the bootstrap, not the whole remaining half.
    "movielens-100k": {
        "max_stream": 15_000,
        "max_retrains": 2,
        "bootstrap_epochs": 3,
        "retrain_epochs": 2,
        "delay_events": 5000,
        "window_events": 1000,
    },
    "movielens-1m-tail": {
        "max_stream": 20_000,
        "max_retrains": 2,
        "bootstrap_epochs": 3,
        "retrain_epochs": 2,
        "label_delay_s": None,
        "window_events": 5000,
    },
}


def _cache(name: str, quick: bool) -> Path:
    return OUT_DIR / f"replay-{name}{'-quick' if quick else ''}.json"


def _learner_desc(res: dict[str, Any]) -> str:
    o = res.get("online_settings") or {}
    if not o:
        return "default online settings"
    return (
        f"micro-batch {o['micro_batch']} learned in slices of {o.get('train_batch', o['micro_batch'])}, "
        f"embedding tables {o['embedding_optimizer']} lr "
        f"{o['embedding_learning_rate']:g}, dense layers Adam lr {o['learning_rate']:g}"
    )


def replay_rows(res: dict[str, Any]) -> list[Row]:
    """Rows of one dataset's replay."""
    name, auc = res["dataset"], res["auc"]
    cond = (
        f"bootstrap first 50% by time ({res['bootstrap_events']} events), stream {res['stream_events']} "
        f"({res['new_user_share']:.0%} from unseen users); prequential AUC over the whole stream"
    )
    rows = [
        Row(f"{name} replay AUC static", auc["static"], conditions=cond + "; bootstrap DCN never updated"),
        Row(
            f"{name} replay AUC daily",
            auc["daily"],
            auc["static"],
            conditions=f"full retrain from scratch every {res['retrain_every_days']} days "
            f"({res['retrains']} retrains, <= {res['retrain_epochs']} epochs each); baseline static",
        ),
        Row(
            f"{name} replay AUC online",
            auc["online"],
            auc["static"],
            conditions=f"test-then-train, {_learner_desc(res)}; baseline static; "
            f"online - static = {100 * (auc['online'] - auc['static']):+.2f} pt, "
            f"online - daily = {100 * (auc['online'] - auc['daily']):+.2f} pt",
        ),
        Row(
            f"{name} replay AUC static stale features",
            auc["static_stale_features"],
            auc["static"],
            conditions="bootstrap model on activity features frozen at the bootstrap end (no Feast pushes); "
            "baseline: static with fresh activity features",
        ),
        Row(
            f"{name} replay logloss online",
            res["logloss"]["online"],
            res["logloss"]["static"],
            conditions=f"baseline static; daily {res['logloss']['daily']:.4f}",
        ),
    ]
    if res.get("delay"):
        rows.append(
            Row(
                f"{name} replay AUC online label delay 1h",
                res["delay"]["auc"],
                res["delay"]["auc_no_delay"],
                conditions="an impression is learned only once 1 h of event time has passed; on the first "
                f"{res['delay']['events']} stream events; baseline: delay 0 on the same events "
                f"(static there: {res['delay']['auc_static']:.4f})",
            )
        )
    if name == "movielens-100k":
        rows.append(
            Row(
                "online learner throughput (events/s)",
                res["online_events_per_s"],
                conditions=f"{name} replay: featurize + score (learner and serving copy) + train, "
                f"{_learner_desc(res)}; load avg {res.get('load_avg', float('nan')):.1f} on 2 cores",
            )
        )
    return rows


def freshness_rows(fresh: dict[str, Any]) -> list[Row]:
    fcond = (
        f"Redis stream at {fresh['rate']:.0f} events/s, export every 5 s, local ModelServer polling 0.5 s; "
        f"{fresh['served']} versions served, {fresh['timed_out']} timed out"
    )
    return [
        Row(
            "freshness p50 (s)",
            fresh["p50_s"] if fresh["p50_s"] is not None else "n/a",
            10.0,
            conditions=fcond + "; baseline: the 10 s target",
        ),
        Row("freshness p95 (s)", fresh["p95_s"] if fresh["p95_s"] is not None else "n/a", conditions=fcond),
    ]


def run(
    quick: bool, datasets: list[str] | None = None, with_freshness: bool = True, cached: bool = False
) -> list[Row]:
    """Rows for benchmarks/results.md (see the module docstring for the protocol).

    Args:
        quick: tiny sizes (a smoke run).
        datasets: subset of the plan's datasets.
        with_freshness: also measure freshness against the local server.
        cached: use replay results saved by an earlier run instead of replaying again.
    """
    import json

    logging.getLogger("freshrec").setLevel(logging.WARNING)
    plans = QUICK_PLANS if quick else FULL_PLANS
    results = []
    rows: list[Row] = []
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, kw in plans.items():
        if datasets and name not in datasets:
            continue
        path = _cache(name, quick)
        if cached and path.is_file():
            res = json.loads(path.read_text())
        else:
            res = replay(name, **kw)
            path.write_text(json.dumps(res, indent=1, default=str))
        results.append(res)
        rows += replay_rows(res)
    if with_freshness:
        model_path = next((Path(r["model_path"]) for r in results if Path(r["model_path"]).is_dir()), None)
        if model_path is None:
            model_path = Path(json.loads(_cache("movielens-100k", quick).read_text())["model_path"])
        # The rate stays below what the learner sustains on the shared cores, so freshness measures the
        # export/serve path rather than a growing backlog.
        fresh = freshness(
            model_path=model_path, seconds=20.0 if quick else 45.0, rate=20.0 if quick else 30.0
        )
        (OUT_DIR / f"freshness{'-quick' if quick else ''}.json").write_text(json.dumps(fresh, indent=1))
        rows += freshness_rows(fresh)
    if results:
        png = plot(results, OUT_DIR / ("online_replay_quick.png" if quick else "online_replay.png"))
        print(f"plot: {png}")
    return rows


if __name__ == "__main__":
    import argparse

    from benchmarks.results import print_rows, write_rows

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dataset", action="append", help="only these datasets (repeatable)")
    parser.add_argument("--no-freshness", action="store_true")
    parser.add_argument("--cached", action="store_true", help="reuse saved replay results")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    got = run(args.quick, args.dataset, not args.no_freshness, args.cached)
    print_rows(got)
    if not args.no_write:
        write_rows(got)
