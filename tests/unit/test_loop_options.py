"""`freshrec run`'s options reach every stage and the child pipelines through one Settings object.

The child pipeline (``freshrec --config <report>/settings.yaml pipeline run --local``) builds its feature
spec as ``components/train`` does, ``FeatureSpec.for_description(load_description(settings.data.dataset))``:
with a user's own description, whose feature names differ from MovieLens', it must get that description's
features, not the default dataset's.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from freshrec.config import load_settings
from freshrec.data.datasets import load_description
from freshrec.loop.runner import Loop, RunOptions, apply_options
from freshrec.model.spec import FeatureSpec

SHIPPED = Path(__file__).resolve().parents[2] / "src" / "freshrec" / "datasets" / "movielens-100k.yaml"


def _renamed_description(tmp_path: Path) -> Path:
    """MovieLens-100k's files under feature names of the user's own choosing."""
    desc = yaml.safe_load(SHIPPED.read_text())
    desc["name"] = "my-ratings"
    desc["users"]["features"] = {
        "viewer_sex": {"type": "categorical", "from": "gender"},
        "viewer_age": {"type": "numeric", "dtype": "int64", "from": "age"},
    }
    desc["items"]["features"] = {
        "film_genres": {"type": "multi_categorical", "flags_prefix": "genre:", "exclude": ["unknown"]},
    }
    path = tmp_path / "my-ratings.yaml"
    path.write_text(yaml.safe_dump(desc, sort_keys=False))
    return path


def _feature_names(settings) -> set[str]:
    spec = FeatureSpec.for_description(
        load_description(settings.data.dataset), settings.model.id_hash_buckets
    )
    return {f.name for f in spec.features}


def test_run_dataset_reaches_the_child_pipelines_settings(tmp_path, settings, monkeypatch):
    path = _renamed_description(tmp_path)
    monkeypatch.chdir(tmp_path)  # a relative path, as a user types it
    loop = Loop(settings, RunOptions(dataset=path.name, epochs=3, run_id="t"))

    child = load_settings(loop.write_child_settings(), workdir=settings.workdir)

    assert child.data.dataset == str(path.resolve())  # absolute: the child's tasks run elsewhere
    assert child.training.epochs == 3
    names = _feature_names(child)
    assert {"viewer_sex", "viewer_age", "film_genres"} <= names
    assert not names & {"user_gender", "user_occupation", "item_genres", "item_year"}
    assert loop.record.dataset == str(path.resolve())


def test_apply_options_leaves_the_given_settings_alone(settings):
    before = settings.model_dump()
    run = apply_options(settings, RunOptions(dataset="synthetic", epochs=1, export_every_events=123))
    assert (run.data.dataset, run.training.epochs, run.online.export_every_events) == ("synthetic", 1, 123)
    assert settings.model_dump() == before
    # no dataset given: the configured one
    assert apply_options(settings, RunOptions()).data.dataset == settings.data.dataset


def test_summary_starts_with_what_production_serves(settings):
    from freshrec.model.repository import ModelRepository

    loop = Loop(settings, RunOptions(run_id="t"))
    loop.record.summary = {"mean window AUC, served": 0.7}
    loop._summarise()  # before the bootstrap: no repository yet, no labels line
    assert "stable version" not in loop.record.summary
    loop.repo = ModelRepository(settings.models_dir, settings.model.name)
    loop._summarise()
    assert list(loop.record.summary)[:2] == ["stable version", "canary version"]
    assert loop.record.summary["stable version"] == "none"
    assert loop.record.summary["mean window AUC, served"] == 0.7
