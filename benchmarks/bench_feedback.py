"""Error feedback in retraining (``training.feedback``): plain retrain vs feedback retrain on a real replay.

Protocol (per dataset and seed; the events in time order, featurised once as
:func:`freshrec.features.training_set.build_training_frame` does, activity from strictly earlier events):

- the first ``history`` rows train the served model ``M0`` (a DCN-V2 with hashed ids, trained from scratch);
- then ``rounds`` retrains. In round ``r`` the arm's served model scores window ``W_r`` (the next ``window``
  rows); each score is written to a real prediction log (:class:`freshrec.serving.predlog.PredictionLog`,
  served 30 s before the rating, i.e. the impression), so the feedback is the project's own path:
  :func:`freshrec.training.feedback.feedback_training_frame` joins the log with the clicks
  (``join_clicks``) and turns each joined row's served logloss into a capped weight (``weight``) or extra
  copies (``augment``);
- every arm then retrains from scratch on the same rows (everything up to the end of ``W_r``; its last
  ``valid`` rows validate, unweighted) with the same seed; the arms differ only in ``training.feedback.mode``.
  The retrained model is scored on ``W_{r+1}`` (window AUC) and becomes the arm's served model for the next
  round, so a feedback arm learns from its own errors, as the loop would;
- per seed: the gain is the mean over rounds of (feedback − plain) window AUC, in AUC points (× 100).

The figure is the mean gain over seeds, with the seed-to-seed spread (sample standard deviation of the
per-seed gains). Verdict: ``training.feedback`` goes on by default only if the gain is positive and larger
than its spread.

Measured sensitivity (2026-12-04, MovieLens-100k, ``weight``): the 2-epoch cap does not bind (with 4 the
window AUCs are identical: early stopping ends every run by then); with 1 epoch the loss is smaller
(-0.71 pt) and round 0 alone gains in 2 of 3 seeds, so the ``--quick`` figure (1 epoch) is no verdict.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.results import Row, main_for

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
# The shared datasets beside the repository; FRESHREC_DATA__DATASETS_DIR (the settings' own variable)
# points elsewhere, e.g. from a worktree that has no ../shared.
DATASETS = Path(
    os.environ.get("FRESHREC_DATA__DATASETS_DIR", str(REPO / ".." / "shared" / "datasets"))
).resolve()
FIGURE = "feedback retrain AUC gain (pt)"
CAP = 3.0  # training.feedback.max_weight, the default
SERVED_BEFORE_S = 30.0
OUT_DIR = REPO / ".freshrec" / "benchmarks"

# One plan for both replays; on the 1M tail it covers the first month (dense: ~100k ratings), the rest
# stretches over two years.
_FULL_PLAN: dict[str, Any] = {
    "start": 0,
    "history": 20_000,
    "window": 5_000,
    "valid": 1_000,
    "rounds": 2,
    "epochs": 2,
    "seeds": [1, 2, 3],
    "modes": ["weight", "augment"],
}
PLANS: dict[bool, dict[str, dict[str, Any]]] = {
    False: {"movielens-100k": _FULL_PLAN, "movielens-1m-tail": _FULL_PLAN},
    True: {
        "movielens-100k": {
            "start": 0,
            "history": 12_000,
            "window": 3_000,
            "valid": 600,
            "rounds": 1,
            "epochs": 1,
            "seeds": [1, 2],
            "modes": ["weight"],
        },
    },
}


def _model_settings():
    from freshrec.config import ModelSettings

    return ModelSettings(
        embedding_dim=16, id_hash_buckets=20_000, deep_units=[64, 32], cross_layers=2, dropout=0.1
    )


def _training(epochs: int, seed: int, mode: str = "off", max_weight: float = CAP):
    from freshrec.config import FeedbackSettings, TrainingSettings

    return TrainingSettings(
        epochs=epochs,
        batch_size=512,
        learning_rate=1e-3,
        early_stopping_patience=1,
        seed=seed,
        warm_start=False,
        feedback=FeedbackSettings(mode=mode, max_weight=max_weight),
    )


def _log_scores(directory: Path, rows: pd.DataFrame, scores: np.ndarray, version: int) -> None:
    """What the gateway logs when it serves ``rows`` (one impression each, just before the rating)."""
    from freshrec.serving.predlog import PredictionLog

    plog = PredictionLog(directory, flush_rows=10**9)
    served = (
        pd.to_datetime(rows["event_timestamp"], utc=True) - pd.Timedelta(seconds=SERVED_BEFORE_S)
    ).astype("int64")
    users, items = rows["user_id"].astype(str).to_numpy(), rows["item_id"].astype(str).to_numpy()
    for k in range(len(rows)):
        plog.add(
            f"v{version}-{k}", users[k], [items[k]], version, "stable", scores[k : k + 1], int(served.iloc[k])
        )
    plog.flush()


def _fit(frame: pd.DataFrame, valid_rows: int, spec, training, settings=None):
    """Train on ``frame`` (its last ``valid_rows`` validate); with ``settings``, through the feedback path."""
    from freshrec.training import train
    from freshrec.training.feedback import feedback_training_frame

    fit_df, valid_df = frame.iloc[:-valid_rows], frame.iloc[-valid_rows:]
    weights, summary = None, None
    if settings is not None:
        fit_df, weights, summary = feedback_training_frame(fit_df, settings)
    result = train(fit_df, valid_df, spec, _model_settings(), training, sample_weight=weights)
    return result.model, summary


def replay(dataset: str, plan: dict[str, Any], datasets_dir: Path = DATASETS) -> dict[str, Any]:
    """Run the protocol on one dataset; per seed the window AUCs of every arm and round."""
    from freshrec.config import load_settings
    from freshrec.data.datasets import load_dataset, load_description, sort_events
    from freshrec.features.training_set import build_training_frame
    from freshrec.model import predict
    from freshrec.model.spec import FeatureSpec
    from freshrec.training.metrics import auc

    t0 = time.perf_counter()
    load_before = os.getloadavg()
    ds = load_dataset(load_description(dataset), datasets_dir)
    h, w, rounds = plan["history"], plan["window"], plan["rounds"]
    need = h + w * (rounds + 1)
    events = sort_events(ds.events).iloc[plan["start"] : plan["start"] + need].reset_index(drop=True)
    if len(events) < need:
        raise ValueError(f"{dataset}: {len(events)} events, the plan needs {need}")
    full = build_training_frame(events, ds.users, ds.items)
    spec = FeatureSpec.for_description(
        ds.description, id_hash_buckets=_model_settings().id_hash_buckets, frame=full.iloc[:h]
    ).adapt(full.iloc[: h - plan["valid"]])
    windows = [full.iloc[h + r * w : h + (r + 1) * w] for r in range(rounds + 1)]
    arms = ["off", *plan["modes"]]
    per_seed: list[dict[str, Any]] = []
    for seed in plan["seeds"]:
        tmp = Path(tempfile.mkdtemp(prefix="bench-feedback-"))
        m0, _ = _fit(full.iloc[:h], plan["valid"], spec, _training(plan["epochs"], seed))
        served = dict.fromkeys(arms, m0)
        aucs: dict[str, list[float]] = {a: [] for a in arms}
        summaries: dict[str, list[dict[str, float]]] = {a: [] for a in plan["modes"]}
        for r in range(rounds):
            upto = full.iloc[: h + (r + 1) * w]
            nxt = windows[r + 1]
            for arm in arms:
                settings = load_settings(workdir=tmp / arm)
                _log_scores(settings.predictions_dir, windows[r], predict(served[arm], windows[r], spec), r)
                training = _training(plan["epochs"], seed * 100 + r, arm)
                settings.training = training
                model, summary = _fit(upto, plan["valid"], spec, training, settings if arm != "off" else None)
                if summary is not None:
                    summaries[arm].append(summary.to_dict())
                aucs[arm].append(auc(nxt["label"].to_numpy(), predict(model, nxt, spec)))
                served[arm] = model
                log.info("%s seed %d round %d %s: window AUC %.4f", dataset, seed, r, arm, aucs[arm][-1])
        gains = {
            mode: float(np.mean([(f - p) * 100 for f, p in zip(aucs[mode], aucs["off"], strict=True)]))
            for mode in plan["modes"]
        }
        per_seed.append({"seed": seed, "auc": aucs, "gain": gains, "feedback": summaries})
    return {
        "dataset": dataset,
        "plan": plan,
        "rows": len(full),
        "label_rate": float(full["label"].mean()),
        "per_seed": per_seed,
        "seconds": time.perf_counter() - t0,
        "load": (load_before, os.getloadavg()),
    }


def _verdict(mean: float, spread: float, quick: bool = False) -> str:
    if quick:
        return "smoke-sized run (--quick, 1 epoch, 2 seeds): no verdict; the full run decides"
    if not math.isfinite(spread):
        return "one seed: no spread, no verdict (stays off by default)"
    if mean > spread:
        return "a gain beyond its seed-to-seed spread: on by default"
    if mean < -spread:
        return "a loss beyond its seed-to-seed spread: stays off by default"
    return "within its seed-to-seed spread: stays off by default"


def rows_of(res: dict[str, Any], figure: str, command: str, quick: bool = False) -> list[Row]:
    """The dataset's rows: the first mode under ``figure``, the others under ``figure`` + ``[mode]``."""
    plan = res["plan"]
    out = []
    for k, mode in enumerate(plan["modes"]):
        gains = [s["gain"][mode] for s in res["per_seed"]]
        mean = statistics.fmean(gains)
        spread = statistics.stdev(gains) if len(gains) > 1 else math.nan
        joined = [d.get("joined", 0) for s in res["per_seed"] for d in s["feedback"][mode]]
        capped = [d.get("capped", 0) for s in res["per_seed"] for d in s["feedback"][mode]]
        seeds = ", ".join(f"seed {s['seed']} {g:+.2f}" for s, g in zip(res["per_seed"], gains, strict=True))
        plain = statistics.fmean(a for s in res["per_seed"] for a in s["auc"]["off"])
        fb = statistics.fmean(a for s in res["per_seed"] for a in s["auc"][mode])
        (b1, b5, _), (a1, a5, _) = res["load"]
        cond = (
            f"{res['dataset']}: mode {mode} (cap {CAP:g}) vs plain; served model on the first "
            f"{plan['history']:,} rows, {plan['rounds']} retrain(s) from scratch on all rows so far "
            f"({plan['epochs']} epoch(s), last {plan['valid']:,} validate), each scored on the next "
            f"{plan['window']:,}-row window; feedback = the served model's logged scores joined with the "
            f"clicks (freshrec.training.feedback; {statistics.fmean(joined):,.0f} rows joined, "
            f"{statistics.fmean(capped):,.0f} capped per retrain); per seed: {seeds}; "
            f"spread (sample sd over {len(gains)} seeds) {spread:.2f} pt; mean window AUC plain {plain:.4f}, "
            f"{mode} {fb:.4f}; verdict: {_verdict(mean, spread, quick)}; load average 1/5 min "
            f"{b1:.1f}/{b5:.1f} before, {a1:.1f}/{a5:.1f} after (2 shared cores, nice 10); "
            f"{res['seconds']:.0f} s; `{command}`"
        )
        name = figure if k == 0 else f"{figure} [{mode}]"
        out.append(Row(name, round(mean, 3), conditions=cond, unit="pt"))
    return out


def run(quick: bool) -> list[Row]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    command = "nice -n 10 python -m benchmarks.bench_feedback" + (" --quick" if quick else "")
    # FRESHREC_BENCH_FEEDBACK_DATASETS (comma-separated) runs a subset of the plan's datasets.
    only = os.environ.get("FRESHREC_BENCH_FEEDBACK_DATASETS")
    datasets = [d for d in PLANS[quick] if only is None or d in only.split(",")]
    rows: list[Row] = []
    for dataset in datasets:
        res = replay(dataset, PLANS[quick][dataset])
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        (OUT_DIR / f"feedback-{dataset}{'-quick' if quick else ''}.json").write_text(
            json.dumps(res, indent=1)
        )
        figure = FIGURE if dataset == "movielens-100k" else FIGURE.replace(" (pt)", f" {dataset} (pt)")
        rows.extend(rows_of(res, figure, command, quick))
    return rows


if __name__ == "__main__":
    main_for(run)
