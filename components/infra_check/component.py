"""Infra check: load the candidate SavedModel in a fresh process and predict on a sample, as serving will."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output
from kfp.dsl.python_component import PythonComponent


def infra_check(
    model: Input[Model], sample: Input[Dataset], metrics: Output[Metrics], rows: int = 64
) -> bool:
    """Fail the pipeline unless the export loads in a fresh process and serves what the trained model predicts.

    Args:
        model: the candidate SavedModel.
        sample: a frame of serving-time rows (the evaluation frame); its first ``rows`` are sent.
        metrics: load and predict timings.
        rows: how many rows to predict.

    Raises:
        RuntimeError: the check failed (the message lists why); the pipeline stops before the push.
    """
    import gc

    import pandas as pd

    from freshrec.model import predict
    from freshrec.model.export import load_keras_model, spec_of
    from freshrec.model.infra import infra_check as check

    frame = pd.read_parquet(sample.path).head(rows)

    # What the trained model says in Python is what the SavedModel must say in a fresh serving process.
    # Computed while the fresh serving process loads the export: the two TensorFlow imports overlap.
    def expected():
        keras_model = load_keras_model(model.path)
        return predict(keras_model, frame, spec_of(keras_model))

    result = check(model.path, frame, expected)
    metrics.log_metric("rows", result.rows)
    metrics.log_metric("seconds", result.seconds)
    metrics.log_metric("ok", int(result.ok))
    metrics.log_metric("max_abs_diff", float(result.max_abs_diff))
    # The process ends with this task: frozen objects are left out of the interpreter's final garbage
    # collections (about 2 s of CPU over TensorFlow's objects at exit).
    gc.freeze()
    if not result.ok:
        raise RuntimeError(f"infra check failed for {model.path}: {result.message}")
    return True


def component(image: str) -> PythonComponent:
    """The KFP component running :func:`infra_check` in ``image``."""
    return dsl.component(infra_check, base_image=image, install_kfp_package=False)
