"""Evaluate + bless: score the candidate on the newest window and compare it with production."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output
from kfp.dsl.python_component import PythonComponent


def evaluate(
    workdir: str,
    settings_json: str,
    model: Input[Model],
    train_set: Input[Dataset],
    test_set: Input[Dataset],
    metrics: Output[Metrics],
    curves: Output[ClassificationMetrics],
    report: Output[Markdown],
    blessing: Output[Artifact],
) -> NamedTuple("EvaluateOutputs", [("blessed", bool), ("auc", float)]):
    """Evaluate the candidate (and the production version on the same rows), then apply the blessing policy.

    Args:
        workdir: freshrec state directory (the model repository holds production).
        settings_json: settings as JSON (merged over the defaults; ``blessing`` is the policy).
        model: the candidate SavedModel.
        train_set: the training frame (known users/items for the cold-start slices).
        test_set: the evaluation frame (newest events).
        metrics: the candidate's metrics (AUC, GAUC, logloss, ECE, ...), shown in the KFP UI.
        curves: ROC curve and confusion matrix at 0.5.
        report: Markdown: candidate vs production, blessing checks, feature attributions, slices.
        blessing: JSON with the candidate and production metrics and the blessing decision.
    """
    import gc
    import json
    from collections import namedtuple

    import numpy as np
    import pandas as pd
    from sklearn.metrics import confusion_matrix, roc_curve

    from freshrec.config import load_settings
    from freshrec.evaluation import bless
    from freshrec.evaluation import evaluate as evaluate_frame
    from freshrec.model.export import predict_saved_model
    from freshrec.model.repository import ModelRepository

    settings = load_settings(None, **{**json.loads(settings_json or "{}"), "workdir": workdir})
    train = pd.read_parquet(train_set.path, columns=["user_id", "item_id"])
    known = {"known_users": set(train["user_id"]), "known_items": set(train["item_id"])}
    test = pd.read_parquet(test_set.path)
    scored = test.assign(score=predict_saved_model(model.path, test))
    candidate = evaluate_frame(scored, **known)
    repo = ModelRepository(settings.models_dir, settings.model.name)
    production_version = repo.stable()
    production = None
    if production_version is not None:
        production = evaluate_frame(
            test.assign(score=predict_saved_model(repo.path(production_version), test)), **known
        )
    decision = bless(candidate.metrics, production.metrics if production else None, settings.blessing)
    # Which raw inputs the candidate relies on: permutation importance on AUC over (up to) 5,000 rows.
    from freshrec.model.explain import permutation_importance, render_markdown, saved_model_predictor
    from freshrec.model.export import load_spec

    spec = load_spec(model.path)
    explanation = permutation_importance(
        saved_model_predictor(model.path), test, spec.input_names, spec.label, repeats=2, max_rows=5000
    )
    explanation.slices = candidate.to_dict()["slices"]

    for name, value in candidate.metrics.items():
        metrics.log_metric(name, float(value))
    labels = scored["label"].to_numpy()
    fpr, tpr, thresholds = roc_curve(labels, scored["score"].to_numpy())
    # The KFP UI draws every point it gets: keep about 200 of them.
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 200)).astype(int))
    thresholds = np.clip(thresholds[keep], 0.0, 1.0)
    curves.log_roc_curve(fpr[keep].tolist(), tpr[keep].tolist(), thresholds.tolist())
    matrix = confusion_matrix(labels, (scored["score"].to_numpy() >= 0.5).astype(int), labels=[0, 1])
    curves.log_confusion_matrix(["no click", "click"], matrix.tolist())

    summary = {
        "candidate": candidate.metrics,
        "production_version": production_version,
        "production": production.metrics if production else None,
        "slices": candidate.slices,
        "blessing": decision.to_dict(),
        "explanation": explanation.to_dict(),
    }
    with open(blessing.path, "w") as f:
        json.dump(summary, f, indent=2, default=float)
    blessing.metadata["blessed"] = bool(decision.blessed)
    blessing.metadata["production_version"] = -1 if production_version is None else production_version

    rows = ["| metric | candidate | production |", "|---|---|---|"]
    for name, value in candidate.metrics.items():
        prod = production.metrics.get(name) if production else None
        rows.append(f"| {name} | {value:.4f} | {'' if prod is None else f'{prod:.4f}'} |")
    verdict = "**blessed**" if decision.blessed else "**not blessed**"
    reasons = [f"- {r}" for r in decision.reasons] or ["- all checks passed"]
    with open(report.path, "w") as f:
        f.write(
            "\n".join(
                [
                    "# Evaluation",
                    "",
                    f"Candidate vs production version {production_version}: {verdict}",
                    "",
                    *reasons,
                    "",
                    *rows,
                    "",
                    render_markdown(explanation),
                ]
            )
            + "\n"
        )
    # The process ends with this task: frozen objects are left out of the interpreter's final garbage
    # collections (about 2 s of CPU over TensorFlow's objects at exit).
    gc.freeze()
    return namedtuple("EvaluateOutputs", ["blessed", "auc"])(
        bool(decision.blessed), float(candidate.metrics["auc"])
    )


def component(image: str) -> PythonComponent:
    """The KFP component running :func:`evaluate` in ``image``."""
    return dsl.component(evaluate, base_image=image, install_kfp_package=False)
