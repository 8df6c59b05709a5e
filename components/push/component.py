"""Push: publish the blessed candidate as the next version of the model repository."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model
from kfp.dsl.python_component import PythonComponent


def push(
    workdir: str,
    settings_json: str,
    model: Input[Model],
    blessing: Input[Artifact],
    train_set: Input[Dataset],
    infra_ok: bool,
) -> int:
    """Copy the SavedModel into ``models/<name>/<version>/`` atomically, with its metadata, and keep its
    training frame as the drift monitor's reference profile for that version (``references/<name>/``).

    Args:
        workdir: freshrec state directory (the repository lives under it).
        settings_json: settings as JSON (merged over the defaults).
        model: the candidate SavedModel.
        blessing: the evaluate step's JSON (metrics, production comparison, blessing).
        train_set: the training frame; its time window goes into the metadata.
        infra_ok: the infra check passed (an input so that the push runs after it).

    Returns:
        The new version number.
    """
    import json

    from freshrec.config import load_settings
    from freshrec.model.repository import ModelRepository

    if not infra_ok:
        raise RuntimeError("refusing to push: the infra check did not pass")
    settings = load_settings(None, **{**json.loads(settings_json or "{}"), "workdir": workdir})
    with open(blessing.path) as f:
        evaluation = json.load(f)
    parent = model.metadata.get("parent_version", -1)
    metadata = {
        "metrics": evaluation["candidate"],
        "blessing": evaluation["blessing"],
        "production_version": evaluation["production_version"],
        "parent": None if parent in (None, -1) else int(parent),
        "data_window": {key: train_set.metadata.get(key) for key in ("start", "end", "rows")},
        "source": "continuous_training",
        # feature attributions + slices on the evaluation window (freshrec.model.explain), for the report
        "explanation": evaluation.get("explanation"),
    }
    from freshrec.model.references import ReferenceStore

    version = int(ModelRepository(settings.models_dir, settings.model.name).publish(model.path, metadata))
    references = ReferenceStore(settings.references_dir, settings.model.name)
    references.write(version, train_set.path)
    return version


def component(image: str) -> PythonComponent:
    """The KFP component running :func:`push` in ``image``."""
    return dsl.component(push, base_image=image, install_kfp_package=False)
