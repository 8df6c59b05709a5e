"""The model-update loop's data screening on the MovieLens-100k replay (issue 18, part 2).

Protocol: the first 50% of events by time train a bootstrap DCN (as in ``benchmarks/online_replay.py``);
the stream is the next ``max_stream`` events, fed to :class:`~freshrec.online.learner.OnlineLearner` in
micro-batches of 256. The poisoned stream injects, at fixed batches:

- bot traffic: 13 batches of 128 clean events + 128 clicks by one new user, each on another item (1,664
  items, random order), at the clean events' times;
- a burst of duplicates: 4 batches of 64 clean events + 192 copies (new ``event_id``) of recent clean events;
- a label flip: every label flipped from batch 45 to the end.

Figures: clean batches held (%) on the clean stream (the whole second half by default: ~196 batches, so
that one false hold is 0.5%, not 1.7%); injected batches held / injected; and the online AUC with vs
without screening on the poisoned stream, where every variant is scored before each step on the batch's
*clean* events with their *true* labels (features from the activity before the batch). ``--seeds``: each
seed trains its own bootstrap model (seed 42 + s) and draws its own bot items and duplicates; the rows
pool the holds over seeds and give the AUC difference's mean and range.

``FRESHREC_DATASETS`` overrides where the datasets are (default ``../shared/datasets``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.online_replay import DATASETS, _model_settings, _train
from benchmarks.results import Row
from freshrec.training.metrics import auc

MICRO = 256
DATASETS = Path(os.environ.get("FRESHREC_DATASETS", str(DATASETS)))


def _batches(stream: pd.DataFrame, items: list[str], seed: int, poison: bool):
    """(batch events, mask of injected rows, clean events with true labels) per micro-batch."""
    rng = np.random.default_rng(seed)
    out, pos, k = [], 0, 0
    bot_items = list(rng.permutation(items))
    while pos < len(stream):
        kind = None
        if poison and 12 <= k < 25:
            kind = "bot"
        elif poison and 30 <= k < 34:
            kind = "dup"
        n_clean = {"bot": 128, "dup": 64}.get(kind, MICRO)
        clean = stream.iloc[pos : pos + n_clean].reset_index(drop=True)
        pos += n_clean
        if clean.empty:
            break
        truth = clean.copy()
        batch, injected = clean.copy(), np.zeros(len(clean), dtype=bool)
        if kind == "bot":
            n = MICRO - len(clean)
            take, bot_items = bot_items[:n], bot_items[n:]
            ts = rng.choice(clean["event_timestamp"].to_numpy(), len(take))
            bot = pd.DataFrame(
                {
                    "event_id": [f"bot-{k}-{i}" for i in range(len(take))],
                    "event_timestamp": pd.to_datetime(ts, utc=True),
                    "user_id": "bot-user",
                    "item_id": take,
                    "label": np.ones(len(take), dtype="int8"),
                    "rating": 5,
                }
            )
            batch = pd.concat([clean, bot], ignore_index=True)
            injected = np.r_[injected, np.ones(len(bot), dtype=bool)]
        elif kind == "dup":
            recent = stream.iloc[max(0, pos - 400) : pos]
            copies = recent.sample(MICRO - len(clean), replace=True, random_state=seed + k).copy()
            copies["event_id"] = [f"dup-{k}-{i}" for i in range(len(copies))]
            batch = pd.concat([clean, copies], ignore_index=True)
            injected = np.r_[injected, np.ones(len(copies), dtype=bool)]
        elif poison and k >= 45:
            batch["label"] = (1 - batch["label"]).astype("int8")
            injected[:] = True
        order = np.argsort(batch["event_timestamp"].to_numpy(), kind="stable")
        out.append((batch.iloc[order].reset_index(drop=True), injected[order], truth))
        k += 1
    return out


def _run(model_path, ds, boot, batches, screening: bool):
    from freshrec.config import OnlineSettings, ScreeningSettings
    from freshrec.features.activity import ActivityState
    from freshrec.model.export import load_keras_model
    from freshrec.online.learner import Featurizer, OnlineLearner, predict
    from freshrec.online.sources import Batch

    activity = ActivityState()
    activity.update(boot)
    feat = Featurizer(ds.users, ds.items, activity)
    settings = OnlineSettings(screening=ScreeningSettings(enabled=screening))
    learner = OnlineLearner(
        load_keras_model(model_path), load_keras_model(model_path), feat, settings, validate=False
    )
    ys, ps, held, injected_batches, held_injected, clean_batches, held_clean = [], [], 0, 0, 0, 0, 0
    missed, false_holds = [], []
    for k, (batch, injected, truth) in enumerate(batches):
        truth = truth.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
        ps.append(predict(learner.model, feat.peek(truth), learner.spec))
        ys.append(truth["label"].to_numpy())
        rec = learner.step(Batch(batch, None, np.zeros(0)))
        was_held = "held" in rec
        if injected.any():
            injected_batches += 1
            held_injected += was_held
            if not was_held:
                missed.append(k)
        else:
            clean_batches += 1
            held_clean += was_held
            if was_held:
                false_holds.append({"batch": k, "reasons": rec["held"]["reasons"]})
        held += was_held
    return {
        "auc": auc(np.concatenate(ys), np.concatenate(ps)),
        "held": held,
        "injected_batches": injected_batches,
        "held_injected": held_injected,
        "clean_batches": clean_batches,
        "held_clean": held_clean,
        "holds_by_test": {k: v for k, v in learner.screener.holds_by_test.items() if v}
        if learner.screener
        else {},
        "missed_injected_batches": missed,
        "false_holds": false_holds,
    }


def screening(
    max_stream: int = 15_000, seed: int = 0, bootstrap_epochs: int = 3, clean_stream: int | None = None
) -> dict:
    """The screening scenarios on the MovieLens-100k replay; returns the figures.

    ``clean_stream``: events of the clean stream the false holds are counted on (None: the whole second
    half); the AUC comparisons use the first ``max_stream``.
    """
    from freshrec.data.datasets import load_dataset, time_split
    from freshrec.features.training_set import build_training_frame
    from freshrec.model.export import export_model
    from freshrec.model.spec import FeatureSpec

    ds = load_dataset("movielens-100k", DATASETS)
    boot, rest = time_split(ds.events, (0.5, 0.5))
    stream = rest.iloc[:max_stream].reset_index(drop=True)
    long_clean = rest.iloc[: clean_stream or len(rest)].reset_index(drop=True)
    frame = build_training_frame(boot, ds.users, ds.items)
    spec = FeatureSpec.for_description(
        ds.description, id_hash_buckets=_model_settings().id_hash_buckets, frame=frame
    )
    model = _train(frame, spec, bootstrap_epochs, seed=42 + seed)
    model_path = export_model(model, Path(tempfile.mkdtemp(prefix="update-loop-")) / "bootstrap")
    items = ds.items["item_id"].astype(str).tolist()
    clean, poisoned = _batches(stream, items, seed, False), _batches(stream, items, seed, True)
    t0 = time.perf_counter()
    out = {
        "clean": _run(model_path, ds, boot, _batches(long_clean, items, seed, False), True),
        "clean_short": _run(model_path, ds, boot, clean, True),
        "poisoned_screened": _run(model_path, ds, boot, poisoned, True),
        "poisoned_plain": _run(model_path, ds, boot, poisoned, False),
        "clean_plain": _run(model_path, ds, boot, clean, False),
    }
    out["seconds"] = time.perf_counter() - t0
    out["load_avg"] = os.getloadavg()[0]
    out["stream"] = len(stream)
    out["clean_stream"] = len(long_clean)
    out["seed"] = seed
    return out


def _ratio(res: dict, num: str, den: str) -> str:
    return f"{res[num]}/{res[den]}"


def screening_rows(results: list[dict]) -> list[Row]:
    """The rows, pooled over the seeds' results."""
    seeds = [r["seed"] for r in results]
    cs = [r["clean"] for r in results]
    ss = [r["poisoned_screened"] for r in results]
    gains = [100.0 * (r["poisoned_screened"]["auc"] - r["poisoned_plain"]["auc"]) for r in results]
    r0 = results[0]
    loads = ", ".join(f"{r['load_avg']:.1f}" for r in results)
    cond = (
        f"movielens-100k replay after a 50% bootstrap, micro-batch {MICRO}, default ScreeningSettings, "
        f"seeds {seeds}; load avg {loads} on 2 cores; command: python -m benchmarks.bench_update_loop "
        f"--seeds {','.join(map(str, seeds))}"
    )
    held_clean, n_clean = sum(c["held"] for c in cs), sum(c["clean_batches"] for c in cs)
    short = [r["clean_short"] for r in results]
    false = [(r["seed"], f["batch"], f["reasons"]) for r in results for f in r["clean"]["false_holds"]]
    rows = [
        Row(
            "screening: clean batches held (%)",
            100.0 * held_clean / max(1, n_clean),
            1.0,
            conditions=f"{held_clean} of {n_clean} clean batches held (clean stream: the whole second half, "
            f"{r0['clean_stream']} events, per seed; per seed {[c['held'] for c in cs]} of "
            f"{cs[0]['clean_batches']}); on the first {r0['stream']} events "
            f"{sum(c['held'] for c in short)} of {sum(c['clean_batches'] for c in short)}; false holds "
            f"(seed, batch, reasons) {false}; baseline: the 1% target; {cond}",
        ),
        Row(
            "screening: injected anomalies held",
            f"{sum(s['held_injected'] for s in ss)}/{sum(s['injected_batches'] for s in ss)}",
            conditions=f"batches with injected events (per seed 13 bot, 4 duplicate burst, label flip from batch "
            f"45 to the end of a {r0['stream']}-event stream) held, per seed "
            f"{[_ratio(s, 'held_injected', 'injected_batches') for s in ss]}, missed batches "
            f"{[s['missed_injected_batches'] for s in ss]}; clean batches of the poisoned stream held "
            f"{[_ratio(s, 'held_clean', 'clean_batches') for s in ss]}; holds by test "
            f"{[s['holds_by_test'] for s in ss]}; {cond}",
        ),
        Row(
            "screening: online AUC with vs without screening on the poisoned stream (pt)",
            float(np.mean(gains)),
            conditions=f"mean over seeds; per seed {[round(g, 2) for g in gains]} (spread "
            f"{max(gains) - min(gains):.2f} pt); AUC on the clean events' true labels, scored before each "
            f"step: screened {[round(s['auc'], 4) for s in ss]}, unscreened "
            f"{[round(r['poisoned_plain']['auc'], 4) for r in results]}, unscreened on the clean stream "
            f"{[round(r['clean_plain']['auc'], 4) for r in results]}, screened on the clean stream "
            f"{[round(c['auc'], 4) for c in short]}; {r0['stream']}-event stream; learner level (no export "
            f"guard in this replay); {cond}",
        ),
    ]
    return rows


def run(quick: bool, seeds: tuple[int, ...] = (0,)) -> list[Row]:
    """Rows for benchmarks/results.md."""
    import json

    logging.getLogger("freshrec").setLevel(logging.ERROR)
    results = [
        screening(
            max_stream=3000 if quick else 15_000,
            seed=seed,
            bootstrap_epochs=1 if quick else 3,
            clean_stream=3000 if quick else None,
        )
        for seed in seeds
    ]
    out = Path(__file__).resolve().parents[1] / ".freshrec" / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"update-loop{'-quick' if quick else ''}.json").write_text(
        json.dumps(results, indent=1, default=str)
    )
    return screening_rows(results)


if __name__ == "__main__":
    import argparse

    from benchmarks.results import print_rows, write_rows

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (each trains its own bootstrap)")
    args = parser.parse_args()
    rows = run(args.quick, tuple(int(s) for s in args.seeds.split(",")))
    print_rows(rows)
    if not args.no_write:
        write_rows(rows)
