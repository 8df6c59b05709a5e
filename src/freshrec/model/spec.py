"""The feature spec: one declarative object that says which raw columns the model takes and how each is encoded.

Training, export, serving and drift checks all read the same spec, so there is one place where a feature's
name, input dtype and encoding live. The spec is plain JSON (pydantic) and has a stable hash that is written
into every published model version.

Encodings (all applied inside the Keras model, so the SavedModel takes raw values):

- ``hash``: string → ``Hashing(num_bins)`` → embedding. Used for ids: a new user or item hashes into a bucket
  of a fixed-size table, so vocabulary growth never changes weight shapes (warm start keeps working).
- ``lookup``: string → ``StringLookup(vocabulary, num_oov_indices=1)`` → embedding: the exact vocabulary
  of the training data plus one out-of-vocabulary bucket, for every categorical whose distinct values fit
  the description's ``vocabulary.max_size`` (hashing beyond it, buckets sized by ``collision_target``).
- ``multi_hash``: a ``separator``-joined string (e.g. ``"Action|Comedy"``), split inside the model, each token
  hashed, embeddings mean-pooled.
- ``normalize``: float → optional ``log1p`` (counts) → ``(x - mean) / std`` with stats adapted from training data.
- ``bucketize``: float → ``Discretization(boundaries)`` → embedding (e.g. release year).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

# The activity features are defined once, by the features contract.
from freshrec.features.activity import ITEM_ACTIVITY, USER_ACTIVITY

Dtype = Literal["string", "int64", "float32"]
Encoding = Literal["hash", "lookup", "multi_hash", "normalize", "bucketize"]

# Counts and durations are heavy-tailed: log1p before standardising.
_LOG1P_SUFFIXES = ("events_1d", "events_7d", "events_30d", "events_total", "hours_since_last")
# Defaults of a description's ``vocabulary:``: at most this many distinct values → StringLookup with an
# OOV slot; above → hashing into buckets sized so that at most this share of values collide.
DEFAULT_MAX_VOCAB = 100_000
DEFAULT_COLLISION_TARGET = 0.05
MULTI_HASH_MIN_BINS = 1024


class Feature(BaseModel):
    """One raw input column and its encoding."""

    name: str
    dtype: Dtype
    encoding: Encoding
    # Encoding parameters: num_bins (hash, multi_hash), separator (multi_hash), vocabulary (lookup),
    # mean/std/log1p (normalize), boundaries (bucketize), embedding_dim (optional override).
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def is_categorical(self) -> bool:
        return self.encoding in ("hash", "lookup", "multi_hash", "bucketize")

    @property
    def adapted(self) -> bool:
        """True when the stats that this encoding needs from training data are present."""
        if self.encoding == "normalize":
            return "mean" in self.params and "std" in self.params
        if self.encoding == "lookup":
            return "vocabulary" in self.params
        if self.encoding == "bucketize":
            return "boundaries" in self.params
        return True


class FeatureSpec(BaseModel):
    """The model's raw inputs, in a fixed order, with their encodings."""

    features: list[Feature]
    label: str = "label"
    version: int = 1

    @property
    def input_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def adapted(self) -> bool:
        return all(f.adapted for f in self.features)

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"feature {name!r} is not in the spec (features: {', '.join(self.input_names)})")

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        return cls.model_validate(json.loads(text))

    def hash(self) -> str:
        """A stable hash of the whole spec (names, dtypes, encodings, adapted stats)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def structure_hash(self) -> str:
        """Hash of names, dtypes, encodings and table sizes only: equal hashes mean weights are interchangeable."""
        parts = []
        for f in self.features:
            size = (
                f.params.get("num_bins")
                or len(f.params.get("vocabulary", []))
                or len(f.params.get("boundaries", []))
            )
            parts.append([f.name, f.dtype, f.encoding, size, f.params.get("embedding_dim")])
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]

    def adapt(self, df: pd.DataFrame) -> FeatureSpec:
        """Return a copy whose normalisation stats, vocabularies and bucket boundaries come from ``df``.

        Raises:
            ValueError: a feature's column is missing from ``df`` or has no usable values.
        """
        missing = [n for n in self.input_names if n not in df.columns]
        if missing:
            raise ValueError(f"training frame lacks feature columns {missing} (has {list(df.columns)})")
        out = []
        for f in self.features:
            params = dict(f.params)
            col = df[f.name]
            if f.encoding == "normalize":
                x = _numeric(col, f.name)
                if params.get("log1p"):
                    x = np.log1p(np.maximum(x, 0.0))
                std = float(np.std(x)) if len(x) else 1.0
                params["mean"] = float(np.mean(x)) if len(x) else 0.0
                params["std"] = std if std > 1e-6 and math.isfinite(std) else 1.0
            elif f.encoding == "lookup":
                params["vocabulary"] = sorted(col.fillna("").astype(str).unique().tolist())
            elif f.encoding == "bucketize":
                x = _numeric(col, f.name)
                known = x[x > 0]  # 0 means unknown (e.g. item_year) and keeps its own bucket below the first
                n = int(params.get("num_buckets", 10))
                if len(known):
                    qs = np.unique(np.quantile(known, np.linspace(0, 1, n + 1)[1:-1]))
                    params["boundaries"] = [float(known.min())] + [float(q) for q in qs if q > known.min()]
                else:
                    params["boundaries"] = [0.5]
            out.append(Feature(name=f.name, dtype=f.dtype, encoding=f.encoding, params=params))
        return FeatureSpec(features=out, label=self.label, version=self.version)

    @classmethod
    def for_description(
        cls, description: Any, id_hash_buckets: int = 50_000, frame: pd.DataFrame | None = None
    ) -> FeatureSpec:
        """Build the spec from a dataset description: ids, every described feature (profile and
        event-level) with its encoding, and the activity features when the description enables them.

        Categorical encodings are sized from ``frame`` (see :func:`categorical_encoding`): an exact
        vocabulary with one OOV bucket while the distinct values fit the limit, hashing beyond it.

        Args:
            description: a ``freshrec.data.datasets.DatasetDescription`` (or anything with a ``features``
                mapping/list of name → ``categorical|numeric|multi_categorical``).
            id_hash_buckets: hash-table size for ``user_id`` and ``item_id``.
            frame: optional training frame: its values size the vocabularies and hash tables, and the
                returned spec is adapted to it.
        """
        features = [
            Feature(name="user_id", dtype="string", encoding="hash", params={"num_bins": id_hash_buckets}),
            Feature(name="item_id", dtype="string", encoding="hash", params={"num_bins": id_hash_buckets}),
        ]
        limits = _vocabulary_limits(description)
        for name, kind, options in _description_features(description):
            if name in ("user_id", "item_id"):
                continue
            features.append(_feature_for(name, kind, frame, {**limits, **options}))
        activity = getattr(description, "activity_enabled", True)
        for name in USER_ACTIVITY + ITEM_ACTIVITY if activity else []:
            if frame is not None and name not in frame.columns:
                continue
            log1p = name.endswith(_LOG1P_SUFFIXES)
            features.append(
                Feature(name=name, dtype="float32", encoding="normalize", params={"log1p": log1p})
            )
        spec = cls(features=features)
        return spec.adapt(frame) if frame is not None else spec


def hash_buckets(n_values: int, collision_target: float, minimum: int = 64) -> int:
    """The smallest power of two ``m >= minimum`` at which at most ``collision_target`` of ``n_values``
    hashed values share their bucket with another value: ``1 - (1 - 1/m)^(n - 1) <= target``."""
    if n_values <= 1:
        return minimum
    need = 1.0 / -math.expm1(math.log1p(-collision_target) / (n_values - 1))
    return max(minimum, 1 << max(0, math.ceil(math.log2(need))))


def collision_share(n_values: int, num_bins: int) -> float:
    """Expected share of ``n_values`` values hashed into ``num_bins`` that share a bucket with another."""
    return 0.0 if n_values <= 1 else -math.expm1((n_values - 1) * math.log1p(-1.0 / num_bins))


def categorical_encoding(
    n_values: int | None,
    *,
    max_vocab: int = DEFAULT_MAX_VOCAB,
    collision_target: float = DEFAULT_COLLISION_TARGET,
    encoding: str | None = None,
    num_bins: int | None = None,
) -> tuple[str, dict[str, Any]]:
    """``(encoding, params)`` of a categorical with ``n_values`` distinct training values.

    ``lookup`` (exact vocabulary, adapted from the data, plus one OOV bucket) while ``n_values`` fits
    ``max_vocab``; else ``hash`` into :func:`hash_buckets` for ``collision_target`` (or ``num_bins``).
    Without data (``n_values`` None) a categorical hashes into 1024 buckets unless told otherwise.
    """
    if encoding is None:
        encoding = "lookup" if n_values is not None and n_values <= max_vocab else "hash"
    if encoding == "lookup":
        return "lookup", {}
    bins = num_bins or (hash_buckets(n_values, collision_target) if n_values is not None else 1024)
    return "hash", {"num_bins": int(bins)}


def _feature_for(name: str, kind: str, frame: pd.DataFrame | None, options: dict[str, Any]) -> Feature:
    kind = kind.lower()
    encoding = options.get("encoding")
    column = frame[name] if frame is not None and name in frame.columns else None
    if kind in ("multi_categorical", "multi-categorical", "multi"):
        bins = options.get("num_bins")
        if bins is None:
            bins = MULTI_HASH_MIN_BINS
            if column is not None:
                tokens = column.fillna("").astype(str).str.split("|").explode()
                n = int(tokens[tokens != ""].nunique())
                bins = max(bins, hash_buckets(n, options["collision_target"]))
        return Feature(
            name=name, dtype="string", encoding="multi_hash", params={"num_bins": int(bins), "separator": "|"}
        )
    if kind == "categorical":
        n = int(column.fillna("").astype(str).nunique()) if column is not None else None
        enc, params = categorical_encoding(
            n,
            max_vocab=options["max_vocab"],
            collision_target=options["collision_target"],
            encoding=encoding,
            num_bins=options.get("num_bins"),
        )
        return Feature(name=name, dtype="string", encoding=enc, params=params)  # type: ignore[arg-type]
    if kind == "numeric":
        if encoding == "bucketize" or (encoding is None and name.endswith("year")):
            buckets = int(options.get("num_buckets") or 10)
            return Feature(name=name, dtype="float32", encoding="bucketize", params={"num_buckets": buckets})
        log1p = bool(options.get("log1p") or False)
        return Feature(name=name, dtype="float32", encoding="normalize", params={"log1p": log1p})
    raise ValueError(
        f"feature {name!r}: unknown type {kind!r} (expected categorical, numeric or multi_categorical)"
    )


_OPTION_KEYS = ("encoding", "max_vocab", "collision_target", "num_bins", "num_buckets", "log1p")


def _vocabulary_limits(description: Any) -> dict[str, Any]:
    vocab = getattr(description, "vocabulary", None)
    return {
        "max_vocab": getattr(vocab, "max_size", DEFAULT_MAX_VOCAB),
        "collision_target": getattr(vocab, "collision_target", DEFAULT_COLLISION_TARGET),
    }


def _description_features(description: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, type, encoding options) from a dataset description, whatever shape its features have."""
    described = getattr(description, "features", None)
    if callable(described):  # freshrec.data.datasets.DatasetDescription: name -> Feature
        out = []
        for name, f in described().items():
            options = {k: getattr(f, k) for k in _OPTION_KEYS if getattr(f, k, None) is not None}
            out.append((str(name), str(f.type), options))
        return out
    feats = described
    if feats is None and isinstance(description, dict):
        feats = description.get("features")
    if feats is None:
        raise ValueError(
            "dataset description has no 'features' (name → categorical|numeric|multi_categorical)"
        )
    triples: list[tuple[str, str, dict[str, Any]]] = []
    items = feats.items() if isinstance(feats, dict) else enumerate(feats)
    for key, value in items:
        if isinstance(value, str):
            triples.append((str(key), value, {}))
            continue
        get = value.get if isinstance(value, dict) else lambda k, v=value: getattr(v, k, None)
        name = get("name") or key
        kind = get("type") or get("kind")
        kind = getattr(kind, "value", kind)
        if not isinstance(name, str) or not kind:
            raise ValueError(f"dataset description: cannot read feature entry {value!r}")
        options = {k: get(k) for k in _OPTION_KEYS if get(k) is not None}
        triples.append((name, str(kind), options))
    return triples


def _numeric(col: pd.Series, name: str) -> np.ndarray:
    try:
        x = pd.to_numeric(col, errors="raise").astype("float64").to_numpy()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"feature {name!r}: expected numbers, got {col.dtype} ({exc})") from exc
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def frame_to_inputs(df: pd.DataFrame, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """The model's input arrays from a frame: strings as ``dtype=object``, numbers as float32/int64.

    Missing strings become ``""`` and missing numbers ``0`` (the activity features' "no history" value).

    Raises:
        ValueError: a feature column is missing or not numeric where a number is expected.
    """
    missing = [n for n in spec.input_names if n not in df.columns]
    if missing:
        raise ValueError(f"frame lacks model input columns {missing}")
    out: dict[str, np.ndarray] = {}
    for f in spec.features:
        col = df[f.name]
        if f.dtype == "string":
            out[f.name] = col.astype("object").where(col.notna(), "").astype(str).to_numpy(dtype=object)
        elif f.dtype == "int64":
            out[f.name] = _numeric(col, f.name).astype(np.int64)
        else:
            out[f.name] = _numeric(col, f.name).astype(np.float32)
    return out


def labels_of(df: pd.DataFrame, spec: FeatureSpec) -> np.ndarray:
    """The label column as float32 in {0, 1}.

    Raises:
        ValueError: the label column is missing or holds values other than 0/1.
    """
    if spec.label not in df.columns:
        raise ValueError(f"frame lacks the label column {spec.label!r}")
    y = pd.to_numeric(df[spec.label], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isin(y, (0.0, 1.0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"label column {spec.label!r} must be 0/1; row {row} has {df[spec.label].iloc[row]!r}"
        )
    return y.astype(np.float32)
