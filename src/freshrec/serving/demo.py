"""A tiny CTR SavedModel with the serving contract's shape, for serving tests and benchmarks.

It takes raw named inputs of the three kinds the real model takes (a string id, an int64 and a
float32 feature) and returns ``probability`` with shape [batch, 1], like
``freshrec.model.export.export_model``. ``bias`` shifts the logit so that versions differ.
"""

from __future__ import annotations

from pathlib import Path

from freshrec.io import atomic_directory, staging_dir

DEMO_INPUTS = {"user_id": "string", "item_id": "string", "user_age": "int64", "item_ctr_total": "float32"}


def export_demo_model(
    out_dir: Path,
    bias: float = 0.0,
    seed: int = 0,
    with_logit: bool = False,
    inputs: dict[str, str] | None = None,
) -> Path:
    """Export the demo model as a SavedModel at ``out_dir`` (written beside it, then renamed).

    Args:
        out_dir: the version folder, e.g. ``models/ctr/3``; must not exist.
        bias: added to the logit, so two versions give different scores.
        seed: weight initialisation seed.
        with_logit: also output ``logit`` (a second named output, for multi-output formats).
        inputs: input name -> dtype (string|int64|float32); default :data:`DEMO_INPUTS`.

    Returns:
        ``out_dir``.
    """
    import keras

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists")
    keras.utils.set_random_seed(seed)
    spec = inputs or DEMO_INPUTS
    named = {name: keras.Input(shape=(), dtype=dtype, name=name) for name, dtype in spec.items()}
    parts = []
    for name, tensor in named.items():
        if spec[name] == "string":
            hashed = keras.layers.Hashing(num_bins=97)(tensor)
            parts.append(keras.layers.Embedding(97, 4)(hashed))
        else:
            parts.append(keras.ops.expand_dims(keras.ops.tanh(keras.ops.cast(tensor, "float32") / 50.0), -1))
    logit = keras.layers.Dense(1)(keras.ops.concatenate(parts, axis=-1)) + bias
    outputs = {"probability": keras.ops.sigmoid(logit)}
    if with_logit:
        outputs["logit"] = logit
    model = keras.Model(named, outputs)
    with atomic_directory(out_dir) as tmp:
        model.export(str(tmp), verbose=False)
    return out_dir


def publish_demo_version(
    models_dir: Path,
    name: str = "ctr",
    bias: float = 0.0,
    seed: int = 0,
    with_logit: bool = False,
    inputs: dict[str, str] | None = None,
) -> int:
    """Export the demo model and publish it to the model repository; returns the new version."""
    from freshrec.model.repository import ModelRepository

    repo = ModelRepository(models_dir, name)
    with staging_dir(models_dir, prefix="demo-export") as tmp:
        export_demo_model(Path(tmp) / "model", bias=bias, seed=seed, with_logit=with_logit, inputs=inputs)
        return repo.publish(Path(tmp) / "model", {"demo": True, "bias": bias}, move=True)
