"""Explanations: which raw features a model version relies on, and what drove one item's score.

Two model-agnostic methods, both over the model's raw named inputs (the serving signature), so they work
alike on a Keras model, a SavedModel and the model server behind the gateway:

- :func:`permutation_importance` — per version, on an evaluation window: shuffle one input column across
  the rows (breaking its link to the label while keeping its distribution), score again, and report the
  AUC lost (mean and spread over ``repeats`` shuffles). All shuffled copies are scored in one batched
  call, so a 1,000-row window with 15 inputs and 3 repeats is one prediction over 45,000 rows.
- :func:`occlusion` — per row (the gateway's ``explain: true``): the score change when one input is set
  to its "missing" value (``""`` for strings, ``0`` for numbers — what :func:`freshrec.model.spec.frame_to_inputs`
  makes of a missing value). ``contribution = score - score_without_feature``: positive means the feature
  raised the score. Cost: one prediction over ``rows × features`` rows.

Integrated gradients (over the embedding outputs) are not implemented: they need the Keras graph split at
the embeddings and about 50 interpolation steps per row; permutation on AUC answers "what does this
version rely on" directly on the metric that blesses it, and occlusion answers "why this item" with the
served model itself.

:class:`Explanation` also carries the evaluation's slice metrics (:func:`freshrec.evaluation.evaluate`)
so one artefact shows both; :func:`render_markdown` renders it for the run report and the KFP artefact.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from freshrec.io import atomic_write_json
from freshrec.training.metrics import auc

# predict(frame) -> probabilities [n]
FramePredictor = Callable[[pd.DataFrame], np.ndarray]
# predict(columns, n) -> probabilities [n]
ColumnPredictor = Callable[[Mapping[str, np.ndarray], int], np.ndarray]

EXPLANATION_FILE = "explanation.json"


@dataclass
class FeatureImportance:
    """One input's permutation importance: the AUC lost when it is shuffled (mean, std over repeats)."""

    feature: str
    auc_drop: float
    auc_drop_std: float


@dataclass
class Explanation:
    """A version's feature attributions on an evaluation window, with the window's slice metrics."""

    method: str
    metric: str
    base_auc: float
    n_rows: int
    repeats: int
    seconds: float
    features: list[FeatureImportance]
    version: int | None = None
    slices: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def top(self, k: int = 10) -> list[FeatureImportance]:
        return self.features[:k]

    def rank_of(self, feature: str) -> int:
        """1-based rank of ``feature`` (1 = most important)."""
        for i, f in enumerate(self.features, 1):
            if f.feature == feature:
                return i
        raise KeyError(f"feature {feature!r} was not attributed (have {[f.feature for f in self.features]})")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["base_auc"] = _finite_or_none(self.base_auc)
        d["features"] = [
            {
                "feature": f.feature,
                "auc_drop": _finite_or_none(f.auc_drop),
                "auc_drop_std": _finite_or_none(f.auc_drop_std),
            }
            for f in self.features
        ]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Explanation:
        nan = float("nan")
        feats = [
            FeatureImportance(
                f["feature"],
                nan if f.get("auc_drop") is None else float(f["auc_drop"]),
                nan if f.get("auc_drop_std") is None else float(f["auc_drop_std"]),
            )
            for f in d.get("features", [])
        ]
        return cls(
            method=str(d["method"]),
            metric=str(d.get("metric", "auc")),
            base_auc=nan if d.get("base_auc") is None else float(d["base_auc"]),
            n_rows=int(d["n_rows"]),
            repeats=int(d.get("repeats", 1)),
            seconds=float(d.get("seconds", 0.0)),
            features=feats,
            version=d.get("version"),
            slices=dict(d.get("slices") or {}),
        )

    def save(self, path: Path | str) -> Path:
        return atomic_write_json(path, self.to_dict(), indent=1)

    @classmethod
    def load(cls, path: Path | str) -> Explanation:
        import json

        return cls.from_dict(json.loads(Path(path).read_text()))


def _finite_or_none(x: float) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(float(x)) else None


def permutation_importance(
    predict: FramePredictor,
    frame: pd.DataFrame,
    features: Sequence[str],
    label: str = "label",
    repeats: int = 3,
    seed: int = 0,
    max_rows: int | None = 20_000,
) -> Explanation:
    """AUC lost when each input column is shuffled, largest first.

    Args:
        predict: scores a frame holding (at least) ``features``; returns probabilities of shape [n].
        frame: the evaluation window, with ``features`` and ``label``.
        features: the model's raw input names.
        label: the 0/1 label column.
        repeats: shuffles per feature (the spread is their std).
        seed: shuffling seed.
        max_rows: a larger window is subsampled (seeded) to this many rows; None keeps all.

    Raises:
        ValueError: a column is missing, the window is empty, has one class only, or ``repeats < 1``.
    """
    missing = [c for c in [*features, label] if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks columns {missing} needed for the explanation")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if not len(frame):
        raise ValueError("the evaluation window is empty: nothing to explain")
    rng = np.random.default_rng(seed)
    if max_rows is not None and len(frame) > max_rows:
        frame = frame.iloc[np.sort(rng.choice(len(frame), max_rows, replace=False))]
    frame = frame.reset_index(drop=True)
    y = pd.to_numeric(frame[label], errors="coerce").to_numpy(dtype=np.float64)
    if len(np.unique(y[np.isfinite(y)])) < 2:
        raise ValueError("the evaluation window holds a single class: AUC (and its drop) is undefined")
    start = time.perf_counter()
    n = len(frame)
    inputs = frame[list(features)]
    copies = [inputs]
    for name in features:
        for _ in range(repeats):
            shuffled = inputs.copy()
            shuffled[name] = inputs[name].to_numpy()[rng.permutation(n)]
            copies.append(shuffled)
    scores = np.asarray(predict(pd.concat(copies, ignore_index=True)), dtype=np.float64).reshape(-1)
    if len(scores) != n * len(copies):
        raise ValueError(f"the predictor returned {len(scores)} scores for {n * len(copies)} rows")
    base = auc(y, scores[:n])
    out = []
    for j, name in enumerate(features):
        drops = [
            base - auc(y, scores[n * (1 + j * repeats + r) : n * (2 + j * repeats + r)])
            for r in range(repeats)
        ]
        out.append(FeatureImportance(name, float(np.mean(drops)), float(np.std(drops))))
    out.sort(key=lambda f: -f.auc_drop if math.isfinite(f.auc_drop) else math.inf)
    return Explanation(
        method="permutation",
        metric="auc",
        base_auc=float(base),
        n_rows=n,
        repeats=repeats,
        seconds=time.perf_counter() - start,
        features=out,
    )


def missing_value(values: np.ndarray) -> Any:
    """The "missing" value of a column: ``""`` for strings, 0 for numbers."""
    return "" if values.dtype == object or values.dtype.kind in "US" else values.dtype.type(0)


def occlusion(
    predict: ColumnPredictor,
    columns: Mapping[str, np.ndarray],
    rows: Sequence[int],
    features: Sequence[str],
    scores: np.ndarray | None = None,
    top: int = 5,
) -> list[list[dict[str, Any]]]:
    """Per row in ``rows``: the ``top`` features by |score change| when each is set to its missing value.

    Args:
        predict: scores input columns (``predict(columns, n)`` → [n]), e.g. the model server's client.
        columns: the request's input columns (1-D arrays of equal length).
        rows: which rows to explain (e.g. the top-ranked items).
        features: which inputs to occlude (e.g. the serving signature's inputs).
        scores: the rows' scores as already served (else they are scored here, in the same call).
        top: features kept per row, largest |contribution| first.

    Returns:
        For each row: ``[{"feature": name, "contribution": score - score_without}, ...]``.
    """
    rows = list(rows)
    features = [f for f in features if f in columns]
    if not rows or not features:
        return [[] for _ in rows]
    k, m = len(rows), len(features)
    extra = 0 if scores is not None else 1
    batch: dict[str, np.ndarray] = {}
    for name, values in columns.items():
        values = np.asarray(values)
        picked = values[rows]
        block = np.tile(picked, m + extra)
        if name in features:
            j = features.index(name)
            block = block.copy()
            block[(j + extra) * k : (j + extra + 1) * k] = missing_value(values)
        batch[name] = block
    out = np.asarray(predict(batch, k * (m + extra)), dtype=np.float64).reshape(-1)
    base = out[:k] if scores is None else np.asarray(scores, dtype=np.float64)[rows]
    result = []
    for i in range(k):
        deltas = [(features[j], float(base[i] - out[(j + extra) * k + i])) for j in range(m)]
        deltas.sort(key=lambda t: -abs(t[1]))
        result.append([{"feature": f, "contribution": d} for f, d in deltas[:top]])
    return result


# --------------------------------------------------------------------------- versions


def saved_model_predictor(path: Path | str, batch_size: int = 8192) -> FramePredictor:
    """A frame predictor over a SavedModel's ``serving_default`` signature (loaded once)."""
    import tensorflow as tf

    from freshrec.model.builder import OUTPUT_NAME
    from freshrec.model.export import SIGNATURE, load_spec
    from freshrec.model.spec import frame_to_inputs

    spec = load_spec(path)
    fn = tf.saved_model.load(str(path)).signatures[SIGNATURE]

    def predict(df: pd.DataFrame) -> np.ndarray:
        inputs = frame_to_inputs(df, spec)
        outs = [
            fn(**{k: tf.constant(v[s : s + batch_size]) for k, v in inputs.items()})[OUTPUT_NAME]
            .numpy()
            .reshape(-1)
            for s in range(0, len(df), batch_size)
        ]
        return np.concatenate(outs) if outs else np.zeros(0, dtype=np.float32)

    return predict


def keras_predictor(model: Any, batch_size: int = 8192) -> FramePredictor:
    """A frame predictor over a Keras model built by :mod:`freshrec.model.builder` (spec attached)."""
    from freshrec.model.export import spec_of
    from freshrec.model.spec import frame_to_inputs

    spec = spec_of(model)

    def predict(df: pd.DataFrame) -> np.ndarray:
        out = model.predict(frame_to_inputs(df, spec), batch_size=batch_size, verbose=0)
        return np.asarray(out).reshape(-1)

    return predict


def explain_version(
    version_dir: Path | str,
    frame: pd.DataFrame,
    *,
    version: int | None = None,
    known_users: Any = None,
    known_items: Any = None,
    repeats: int = 3,
    max_rows: int | None = 20_000,
    seed: int = 0,
) -> Explanation:
    """Permutation importance of a published version on ``frame``, with the window's slice metrics."""
    from freshrec.evaluation import evaluate
    from freshrec.model.export import load_spec

    spec = load_spec(version_dir)
    predict = saved_model_predictor(version_dir)
    expl = permutation_importance(
        predict, frame, spec.input_names, spec.label, repeats=repeats, seed=seed, max_rows=max_rows
    )
    expl.version = version
    if "user_id" in frame.columns:  # the slices are by user (and item, genre); a bare window has none
        scored = frame.assign(score=predict(frame))
        expl.slices = evaluate(scored, known_users=known_users, known_items=known_items).to_dict()["slices"]
    return expl


# --------------------------------------------------------------------------- rendering


def _f(x: Any, digits: int = 4) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def render_markdown(expl: Explanation, top: int = 10) -> str:
    """A Markdown section: the top features by AUC drop, then the slice metrics."""
    who = f"version {expl.version}" if expl.version is not None else "the model"
    lines = [
        f"### Explanations: {who}",
        "",
        f"Permutation importance on AUC over {expl.n_rows} evaluation rows ({expl.repeats} shuffles per "
        f"feature, {expl.seconds:.1f} s); base AUC {_f(expl.base_auc)}.",
        "",
        "| rank | feature | AUC drop | ± |",
        "|---:|---|---:|---:|",
    ]
    for i, f in enumerate(expl.top(top), 1):
        lines.append(f"| {i} | {f.feature} | {_f(f.auc_drop)} | {_f(f.auc_drop_std)} |")
    if expl.slices:
        lines += ["", "| slice | n | AUC | logloss | ECE |", "|---|---:|---:|---:|---:|"]
        for name, m in expl.slices.items():
            n = m.get("n")
            lines.append(
                f"| {name} | {'—' if n is None else int(n)} | {_f(m.get('auc'))} | "
                f"{_f(m.get('logloss'))} | {_f(m.get('ece'))} |"
            )
    return "\n".join(lines) + "\n"


def render_html(explanations: Sequence[Mapping[str, Any]], top: int = 10) -> str:
    """The run report's section body: per explained version, its top features and slice metrics.

    ``explanations`` are :meth:`Explanation.to_dict` records (what the run record keeps).
    """
    import html

    if not explanations:
        return "<p class='muted'>no version was explained in this run (<code>freshrec explain --version N</code>)</p>"
    parts = []
    for raw in explanations:
        expl = Explanation.from_dict(raw)
        who = f"version {expl.version}" if expl.version is not None else "model"
        rows = "".join(
            f"<tr><td>{i}</td><td>{html.escape(f.feature)}</td><td>{_f(f.auc_drop)}</td>"
            f"<td>{_f(f.auc_drop_std)}</td></tr>"
            for i, f in enumerate(expl.top(top), 1)
        )
        parts.append(
            f"<h3>{html.escape(who)}</h3><p>Permutation importance on AUC over {expl.n_rows} evaluation rows "
            f"({expl.repeats} shuffles per feature, {expl.seconds:.1f} s); base AUC {_f(expl.base_auc)}.</p>"
            "<table><thead><tr><th>rank</th><th>feature</th><th>AUC drop</th><th>±</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )
        if expl.slices:
            srows = "".join(
                f"<tr><td>{html.escape(name)}</td><td>{'—' if m.get('n') is None else int(m['n'])}</td>"
                f"<td>{_f(m.get('auc'))}</td><td>{_f(m.get('logloss'))}</td><td>{_f(m.get('ece'))}</td></tr>"
                for name, m in expl.slices.items()
            )
            parts.append(
                "<table><thead><tr><th>slice</th><th>n</th><th>AUC</th><th>logloss</th><th>ECE</th></tr>"
                f"</thead><tbody>{srows}</tbody></table>"
            )
    return "".join(parts)
