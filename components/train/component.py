"""Train: fit the ranking model on the training set, warm-started from the production version."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output
from kfp.dsl.python_component import PythonComponent


def train(
    workdir: str,
    settings_json: str,
    train_set: Input[Dataset],
    valid_set: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    epochs: int = 0,
) -> None:
    """Train the model and export it as a SavedModel into the ``model`` artifact.

    Args:
        workdir: freshrec state directory (holds the model repository the warm start reads).
        settings_json: settings as JSON (merged over the defaults; ``{}`` for the defaults).
        train_set: Parquet training frame.
        valid_set: Parquet validation frame (early stopping).
        model: output SavedModel directory (+ the Keras weights a child model warm-starts from).
        metrics: output training metrics (the last epoch's; ``feedback_*`` when ``training.feedback`` is on).
        epochs: overrides ``training.epochs`` when > 0.
    """
    import gc
    import json

    from freshrec.config import load_settings
    from freshrec.data.datasets import load_description
    from freshrec.model.repository import ModelRepository
    from freshrec.model.spec import FeatureSpec
    from freshrec.training import train as fit
    from freshrec.training.feedback import feedback_training_frame

    settings = load_settings(None, **{**json.loads(settings_json or "{}"), "workdir": workdir})
    training = settings.training
    if epochs > 0:
        training = training.model_copy(update={"epochs": epochs})
    spec = FeatureSpec.for_description(
        load_description(settings.data.dataset), settings.model.id_hash_buckets
    )
    repo = ModelRepository(settings.models_dir, settings.model.name)
    parent = repo.stable() if training.warm_start else None
    # training.feedback: rows the served model scored badly (prediction log joined with clicks) count more.
    rows, weights, feedback = feedback_training_frame(train_set.path, settings)
    result = fit(
        rows,
        valid_set.path,
        spec,
        settings.model,
        training,
        parent=repo.path(parent) if parent is not None else None,
        sample_weight=weights,
    )
    result.export(model.path)
    model.metadata["parent_version"] = -1 if parent is None else parent
    model.metadata["warm_started"] = bool(result.warm_started)
    model.metadata["spec_hash"] = result.spec.hash()
    for name, value in result.metrics.items():
        metrics.log_metric(name, float(value))
    if feedback.mode != "off":
        for name, value in feedback.to_dict().items():
            metrics.log_metric(f"feedback_{name}", value)
    # The process ends with this task: frozen objects are left out of the interpreter's final garbage
    # collections (about 2 s of CPU over TensorFlow's objects at exit).
    gc.freeze()


def component(image: str) -> PythonComponent:
    """The KFP component running :func:`train` in ``image`` (which has freshrec installed)."""
    return dsl.component(train, base_image=image, install_kfp_package=False)
