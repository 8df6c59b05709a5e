"""The feature spec: one declarative object that says which raw columns the model takes and how each is encoded.

Training, export, serving and drift checks all read the same spec, so there is one place where a feature's
name, input dtype and encoding live. The spec is plain JSON (pydantic) and has a stable hash that is written
into every published model version.

Encodings (all applied inside the Keras model, so the SavedModel takes raw values):

- ``hash``: string → ``Hashing(num_bins)`` → embedding. Used for ids: a new user or item hashes into a bucket
  of a fixed-size table, so vocabulary growth never changes weight shapes (warm start keeps working).
- ``lookup``: string → ``StringLookup(vocabulary, num_oov_indices=1)`` → embedding; for small vocabularies.
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
# At most this many distinct values → StringLookup with an OOV slot; above → hashing sized for growth.
LOOKUP_MAX_VOCAB = 64


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
        """Build the spec from a dataset description's feature types, plus ids and the activity features.

        Args:
            description: a ``freshrec.data.datasets.DatasetDescription`` (or anything with a ``features``
                mapping/list of name → ``categorical|numeric|multi_categorical``).
            id_hash_buckets: hash-table size for ``user_id`` and ``item_id``.
            frame: optional training frame: its cardinalities choose lookup vs hashing for categoricals,
                and the returned spec is adapted to it.
        """
        features = [
            Feature(name="user_id", dtype="string", encoding="hash", params={"num_bins": id_hash_buckets}),
            Feature(name="item_id", dtype="string", encoding="hash", params={"num_bins": id_hash_buckets}),
        ]
        for name, kind in _description_features(description):
            if name in ("user_id", "item_id"):
                continue
            features.append(_feature_for(name, kind, frame))
        for name in USER_ACTIVITY + ITEM_ACTIVITY:
            if frame is not None and name not in frame.columns:
                continue
            log1p = name.endswith(_LOG1P_SUFFIXES)
            features.append(
                Feature(name=name, dtype="float32", encoding="normalize", params={"log1p": log1p})
            )
        spec = cls(features=features)
        return spec.adapt(frame) if frame is not None else spec


def _feature_for(name: str, kind: str, frame: pd.DataFrame | None) -> Feature:
    kind = kind.lower()
    if kind in ("multi_categorical", "multi-categorical", "multi"):
        return Feature(
            name=name, dtype="string", encoding="multi_hash", params={"num_bins": 1024, "separator": "|"}
        )
    if kind == "categorical":
        n = int(frame[name].nunique()) if frame is not None and name in frame.columns else None
        if n is not None and n <= LOOKUP_MAX_VOCAB:
            return Feature(name=name, dtype="string", encoding="lookup")
        # Room to grow: 4x the seen cardinality, at least 1024 buckets.
        bins = max(1024, 1 << max(0, math.ceil(math.log2(max(1, (n or 256) * 4)))))
        return Feature(name=name, dtype="string", encoding="hash", params={"num_bins": bins})
    if kind == "numeric":
        if name.endswith("year"):
            return Feature(name=name, dtype="float32", encoding="bucketize", params={"num_buckets": 10})
        return Feature(name=name, dtype="float32", encoding="normalize", params={"log1p": False})
    raise ValueError(
        f"feature {name!r}: unknown type {kind!r} (expected categorical, numeric or multi_categorical)"
    )


def _description_features(description: Any) -> list[tuple[str, str]]:
    """(name, type) pairs from a dataset description, whatever shape its ``features`` field has."""
    types = getattr(description, "feature_types", None)
    if callable(types):  # freshrec.data.datasets.DatasetDescription
        return [(str(k), str(getattr(v, "value", v))) for k, v in types().items()]
    feats = getattr(description, "features", None)
    if feats is None and isinstance(description, dict):
        feats = description.get("features")
    if feats is None:
        raise ValueError(
            "dataset description has no 'features' (name → categorical|numeric|multi_categorical)"
        )
    pairs: list[tuple[str, str]] = []
    items = feats.items() if isinstance(feats, dict) else enumerate(feats)
    for key, value in items:
        if isinstance(value, str):
            pairs.append((str(key), value))
            continue
        get = value.get if isinstance(value, dict) else lambda k, v=value: getattr(v, k, None)
        name = get("name") or key
        kind = get("type") or get("kind")
        kind = getattr(kind, "value", kind)
        if not isinstance(name, str) or not kind:
            raise ValueError(f"dataset description: cannot read feature entry {value!r}")
        pairs.append((name, str(kind)))
    return pairs


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
