"""Keras models built from a :class:`~freshrec.model.spec.FeatureSpec`: DCN-V2 and logistic regression.

Every encoding (hashing, lookup, splitting of multi-valued strings, normalisation, bucketing) is a layer of
the model, so the model takes raw columns by name and the exported SavedModel cannot skew from training.
TensorFlow and Keras are imported inside the functions: this module is imported by the CLI.
"""

from __future__ import annotations

import functools
from typing import Any

from freshrec.config import ModelSettings
from freshrec.model.spec import Feature, FeatureSpec

OUTPUT_NAME = "probability"
# Bucket edges for standardised numerics (numeric_embeddings): quarter-sigma steps within ±2.5 sigma.
_Z_EDGES = [x / 4 for x in range(-10, 11)]


@functools.cache
def _layers() -> dict[str, Any]:
    """Custom layers, defined once (and registered for .keras serialisation) on first use."""
    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="freshrec")
    class Standardize(keras.layers.Layer):
        """``(log1p(max(x, 0)) - mean) / std`` (log1p optional), clipped; stats are config, not weights."""

        def __init__(self, mean: float = 0.0, std: float = 1.0, log1p: bool = False, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.mean, self.std, self.log1p = float(mean), float(std), bool(log1p)

        def call(self, x):
            x = tf.cast(x, "float32")
            if self.log1p:
                x = tf.math.log1p(tf.maximum(x, 0.0))
            x = tf.clip_by_value((x - self.mean) / self.std, -8.0, 8.0)
            return tf.cast(tf.expand_dims(x, -1), self.compute_dtype)

        def compute_output_shape(self, input_shape):
            return (*input_shape, 1)

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "mean": self.mean, "std": self.std, "log1p": self.log1p}

    @keras.saving.register_keras_serializable(package="freshrec")
    class MultiHashEmbedding(keras.layers.Layer):
        """Split a ``separator``-joined string, hash each token, mean-pool the token embeddings."""

        def __init__(
            self, num_bins: int, dim: int, separator: str = "|", l2: float = 0.0, **kwargs: Any
        ) -> None:
            super().__init__(**kwargs)
            self.num_bins, self.dim, self.separator, self.l2 = int(num_bins), int(dim), separator, float(l2)

        def build(self, input_shape) -> None:
            self.table = self.add_weight(
                name="embeddings",
                shape=(self.num_bins, self.dim),
                initializer=keras.initializers.RandomUniform(-0.05, 0.05),
                regularizer=keras.regularizers.L2(self.l2) if self.l2 else None,
            )

        def call(self, x):
            tokens = tf.strings.split(x, sep=self.separator)
            ids = tf.strings.to_hash_bucket_fast(tokens.flat_values, self.num_bins)
            # "" (no genre) is a token of its own: split("") yields [""], hashed like any other.
            vectors = tokens.with_flat_values(tf.gather(tf.convert_to_tensor(self.table), ids))
            total = tf.reduce_sum(vectors, axis=1)
            count = tf.cast(tf.maximum(tokens.row_lengths(), 1), total.dtype)
            return tf.cast(total / tf.expand_dims(count, -1), self.compute_dtype)

        def compute_output_shape(self, input_shape):
            return (*input_shape, self.dim)

        def get_config(self) -> dict[str, Any]:
            return {
                **super().get_config(),
                "num_bins": self.num_bins,
                "dim": self.dim,
                "separator": self.separator,
                "l2": self.l2,
            }

    @keras.saving.register_keras_serializable(package="freshrec")
    class CrossLayer(keras.layers.Layer):
        """One DCN-V2 cross layer: ``x_{l+1} = x0 * (W x_l + b) + x_l``; ``W = U V`` when ``rank`` is set."""

        def __init__(self, rank: int | None = None, l2: float = 0.0, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.rank, self.l2 = rank, float(l2)

        def build(self, input_shape) -> None:
            x0_shape = input_shape[0]
            dim = int(x0_shape[-1])
            reg = keras.regularizers.L2(self.l2) if self.l2 else None
            if self.rank:
                self.v = keras.layers.Dense(self.rank, use_bias=False, kernel_regularizer=reg)
                self.v.build(x0_shape)
                self.u = keras.layers.Dense(dim, kernel_regularizer=reg)
                self.u.build((*x0_shape[:-1], self.rank))
            else:
                self.v = None
                self.u = keras.layers.Dense(dim, kernel_regularizer=reg)
                self.u.build(x0_shape)

        def call(self, inputs):
            x0, x = inputs
            h = self.u(self.v(x)) if self.v is not None else self.u(x)
            return x0 * h + x

        def compute_output_shape(self, input_shape):
            return input_shape[0]

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "rank": self.rank, "l2": self.l2}

    return {"Standardize": Standardize, "MultiHashEmbedding": MultiHashEmbedding, "CrossLayer": CrossLayer}


def custom_objects() -> dict[str, Any]:
    """The custom layers by name, for ``keras.models.load_model``."""
    return dict(_layers())


def _input(feature: Feature):
    import keras

    dtype = {"string": "string", "int64": "int64", "float32": "float32"}[feature.dtype]
    return keras.Input(shape=(), dtype=dtype, name=feature.name)


def _encode(feature: Feature, x, dim: int, l2: float, ids_l2: float):
    """Encode one raw input: an embedding [batch, dim] for categoricals, [batch, 1] for numerics."""
    import keras

    layers = _layers()
    if not feature.adapted:
        raise ValueError(
            f"feature {feature.name!r} has no adapted stats; call FeatureSpec.adapt(train_frame) first"
        )
    p = feature.params
    dim = int(p.get("embedding_dim", dim))
    name = feature.name
    if feature.encoding == "normalize":
        return layers["Standardize"](p["mean"], p["std"], p.get("log1p", False), name=f"{name}_norm")(x)
    if feature.encoding == "multi_hash":
        return layers["MultiHashEmbedding"](
            p["num_bins"], dim, p.get("separator", "|"), l2=l2, name=f"{name}_emb"
        )(x)
    if feature.encoding == "hash":
        ids = keras.layers.Hashing(num_bins=int(p["num_bins"]), name=f"{name}_hash")(x)
        size = int(p["num_bins"])
        reg = ids_l2 if name in ("user_id", "item_id") else l2
    elif feature.encoding == "lookup":
        ids = keras.layers.StringLookup(
            vocabulary=list(p["vocabulary"]), num_oov_indices=1, name=f"{name}_lookup"
        )(x)
        size = len(p["vocabulary"]) + 1
        reg = l2
    elif feature.encoding == "bucketize":
        cast = keras.layers.Identity(name=f"{name}_float", dtype="float32")(x)
        ids = keras.layers.Discretization(bin_boundaries=list(p["boundaries"]), name=f"{name}_bucket")(cast)
        size = len(p["boundaries"]) + 1
        reg = l2
    else:  # pragma: no cover - guarded by the Encoding literal
        raise ValueError(f"unknown encoding {feature.encoding!r}")
    return keras.layers.Embedding(
        size,
        dim,
        embeddings_initializer=keras.initializers.RandomUniform(-0.05, 0.05),
        embeddings_regularizer=keras.regularizers.L2(reg) if reg else None,
        name=f"{name}_emb",
    )(ids)


def build_model(spec: FeatureSpec, settings: ModelSettings | None = None):
    """A compiled-ready (not compiled) Keras model over ``spec``'s raw inputs returning the click probability.

    Args:
        spec: an adapted feature spec (see :meth:`FeatureSpec.adapt`).
        settings: architecture (``dcn`` or ``lr``) and sizes; defaults to :class:`ModelSettings`.

    Returns:
        A functional ``keras.Model`` taking a dict of 1-D tensors keyed by feature name and returning
        probabilities of shape ``[batch, 1]`` (float32 even under mixed precision).
    """
    import keras

    settings = settings or ModelSettings()
    inputs = {f.name: _input(f) for f in spec.features}
    l2 = float(getattr(settings, "embedding_l2", 0.0))
    ids_l2 = float(getattr(settings, "id_embedding_l2", l2))
    if settings.architecture == "lr":
        parts = []
        numerics = []
        for f in spec.features:
            if f.encoding == "normalize":
                numerics.append(_encode(f, inputs[f.name], 1, l2, ids_l2))
            else:
                parts.append(_encode(f, inputs[f.name], 1, l2, ids_l2))
        if numerics:
            num = numerics[0] if len(numerics) == 1 else keras.layers.Concatenate(name="numerics")(numerics)
            parts.append(keras.layers.Dense(1, use_bias=False, name="numeric_weights")(num))
        logit = parts[0] if len(parts) == 1 else keras.layers.Add(name="wide_sum")(parts)
        # A unit weight on the summed logit: the wide model starts as plain LR with predictions near 0.5.
        out = keras.layers.Dense(
            1, activation="sigmoid", kernel_initializer="ones", dtype="float32", name=OUTPUT_NAME
        )(logit)
        return keras.Model(inputs=inputs, outputs=out, name="freshrec_lr")
    if settings.architecture != "dcn":
        raise ValueError(f"unknown architecture {settings.architecture!r} (expected 'dcn' or 'lr')")

    encoded = [_encode(f, inputs[f.name], settings.embedding_dim, l2, ids_l2) for f in spec.features]
    if getattr(settings, "numeric_embeddings", False):
        # Also embed each standardised numeric by its bucket (fixed edges in z-space): a piecewise-constant
        # view that lets the cross network multiply "ranges" (e.g. heavy user x popular item), not only values.
        for f, enc in zip(spec.features, list(encoded), strict=True):
            if f.encoding == "normalize":
                z = keras.layers.Reshape((), name=f"{f.name}_z")(enc)
                ids = keras.layers.Discretization(bin_boundaries=_Z_EDGES, name=f"{f.name}_zbucket")(z)
                encoded.append(
                    keras.layers.Embedding(
                        len(_Z_EDGES) + 1,
                        settings.embedding_dim,
                        embeddings_initializer=keras.initializers.RandomUniform(-0.05, 0.05),
                        embeddings_regularizer=keras.regularizers.L2(l2) if l2 else None,
                        name=f"{f.name}_zemb",
                    )(ids)
                )
    x0 = keras.layers.Concatenate(name="x0")(encoded)
    rank = getattr(settings, "cross_rank", None)
    cross_l2 = float(getattr(settings, "dense_l2", 0.0))
    x = x0
    for i in range(settings.cross_layers):
        x = _layers()["CrossLayer"](rank=rank, l2=cross_l2, name=f"cross_{i}")([x0, x])
    deep = x0
    for i, units in enumerate(settings.deep_units):
        batch_norm = bool(getattr(settings, "deep_batch_norm", False))
        deep = keras.layers.Dense(
            units,
            activation=None if batch_norm else "relu",
            use_bias=not batch_norm,
            kernel_regularizer=keras.regularizers.L2(cross_l2) if cross_l2 else None,
            name=f"deep_{i}",
        )(deep)
        if batch_norm:
            deep = keras.layers.BatchNormalization(name=f"deep_bn_{i}")(deep)
            deep = keras.layers.ReLU(name=f"deep_relu_{i}")(deep)
        if settings.dropout:
            deep = keras.layers.Dropout(settings.dropout, name=f"deep_dropout_{i}")(deep)
    both = keras.layers.Concatenate(name="cross_and_deep")([x, deep]) if settings.deep_units else x
    # Small output weights: a fresh model predicts near 0.5 (loss ~ ln 2) instead of a random confident guess.
    out = keras.layers.Dense(
        1,
        activation="sigmoid",
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.01),
        dtype="float32",
        name=OUTPUT_NAME,
    )(both)
    return keras.Model(inputs=inputs, outputs=out, name="freshrec_dcn_v2")
