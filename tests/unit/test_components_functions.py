"""Each component's plain function, called directly with local artifacts: the glue from inputs to outputs.

The freshrec functions they wrap are tested by their owners; these tests check that a component reads its
inputs, calls through, and writes every output it declares (files, metrics, return values). Heavy steps
(Feast, TensorFlow, Evidently) are chained once in a module fixture and marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Markdown, Metrics, Model


def _art(cls, path: Path, **metadata):
    art = cls(uri=str(path))
    art.metadata.update(metadata)
    return art


def _settings_json(settings) -> str:
    data = settings.model_dump(mode="json")
    data.pop("workdir")
    return json.dumps(data)


# ------------------------------------------------------------------------------------------ push gate


@pytest.mark.parametrize(
    ("blessed", "data_ok", "allowed"),
    [(True, True, True), (True, False, False), (False, True, False), (False, False, False)],
)
def test_push_gate_allows_only_blessed_models_on_good_data(tmp_path, blessed, data_ok, allowed):
    from freshrec.components.push_gate.component import push_gate

    decision = _art(Markdown, tmp_path / "decision.md")
    assert push_gate(blessed, data_ok, "quality_failure" if not data_ok else "ok", decision) is allowed
    text = Path(decision.path).read_text()
    assert ("push: yes" in text) is allowed
    if not data_ok:
        assert "quality_failure" in text
    if not blessed:
        assert "not blessed" in text


# ------------------------------------------------------------------------------------------ ingest


def _event_rows(n: int, start: str = "2024-01-01") -> pd.DataFrame:
    ts = pd.date_range(start, periods=n, freq="min", tz="UTC")
    return pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "event_timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "user_id": [f"u{i % 7}" for i in range(n)],
            "item_id": [f"i{i % 5}" for i in range(n)],
            "label": [i % 2 for i in range(n)],
        }
    )


def test_ingest_validates_a_file_and_snapshots_the_log(settings, tmp_path):
    from freshrec.components.ingest.component import ingest

    rows = _event_rows(40)
    bad = rows.head(3).copy()
    bad["event_id"] = ["b1", "b2", "b3"]
    bad["label"] = ["7", "x", "2"]  # not 0/1: quarantined
    source = tmp_path / "events.csv"
    pd.concat([rows, bad]).to_csv(source, index=False)

    events, metrics, report = (
        _art(Dataset, tmp_path / "events"),
        _art(Metrics, tmp_path / "m"),
        _art(Markdown, tmp_path / "r.md"),
    )
    out = ingest(
        str(settings.workdir), _settings_json(settings), events, metrics, report, source_path=str(source)
    )
    assert (out.received, out.accepted, out.quarantined) == (43, 40, 3)
    assert metrics.metadata["quarantined"] == 3 and metrics.metadata["log_rows"] == 40
    snapshot = pd.read_parquet(events.path)
    assert len(snapshot) == 40 and events.metadata["rows"] == 40
    assert set(snapshot["event_id"]) == {f"e{i}" for i in range(40)}
    assert "Quarantine reasons" in Path(report.path).read_text()

    # No source and a non-empty log: nothing new is ingested, the snapshot is the log.
    again = _art(Dataset, tmp_path / "events2")
    out = ingest(
        str(settings.workdir),
        _settings_json(settings),
        again,
        _art(Metrics, tmp_path / "m2"),
        _art(Markdown, tmp_path / "r2"),
    )
    assert (out.received, out.accepted) == (0, 0)
    assert len(pd.read_parquet(again.path)) == 40


def test_ingest_of_a_malformed_file_fails_and_writes_nothing(settings, tmp_path):
    from freshrec.components.ingest.component import ingest
    from freshrec.data.validation import FileFormatError

    source = tmp_path / "broken.csv"
    source.write_text("")
    events = _art(Dataset, tmp_path / "events")
    with pytest.raises(FileFormatError):
        ingest(
            str(settings.workdir),
            _settings_json(settings),
            events,
            _art(Metrics, tmp_path / "m"),
            _art(Markdown, tmp_path / "r"),
            source_path=str(source),
        )
    assert not Path(events.path).exists()


# ------------------------------------------------------------------------------------------ push + rollout


def _fake_export(path: Path) -> Path:
    """An export directory as the repository sees it (publishing copies files; it does not load them)."""
    path.mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"\x08\x01")
    (path / "variables").mkdir()
    return path


def _push(settings, tmp_path: Path, name: str) -> int:
    from freshrec.components.push.component import push

    blessing = tmp_path / f"{name}-blessing.json"
    blessing.write_text(
        json.dumps(
            {
                "candidate": {"auc": 0.7},
                "blessing": {"blessed": True, "reasons": []},
                "production_version": None,
            }
        )
    )
    model = _art(Model, _fake_export(tmp_path / name), parent_version=-1)
    frame = tmp_path / f"{name}-train.parquet"
    pd.DataFrame({"user_age": [20.0, 30.0], "label": [0, 1], "model": [name, name]}).to_parquet(frame)
    train_set = _art(Dataset, frame, start="2024-01-01", end="2024-01-08", rows=100)
    return push(
        str(settings.workdir), _settings_json(settings), model, _art(Artifact, blessing), train_set, True
    )


def test_push_publishes_versions_with_metadata_and_rollout_labels_them(settings, tmp_path, port_factory):
    from freshrec.components.rollout.component import rollout
    from freshrec.model.repository import ModelRepository

    settings.serving.gateway_port = port_factory()  # nothing listens there: "auto" cannot canary
    repo = ModelRepository(settings.models_dir, settings.model.name)
    assert _push(settings, tmp_path, "m1") == 1
    meta = repo.metadata(1)
    assert meta["metrics"] == {"auc": 0.7} and meta["blessing"]["blessed"] is True
    assert meta["data_window"] == {"start": "2024-01-01", "end": "2024-01-08", "rows": 100}
    assert meta["parent"] is None

    # The first version becomes stable at once: there is nothing to canary against.
    report = _art(Markdown, tmp_path / "rollout1.md")
    assert rollout(str(settings.workdir), _settings_json(settings), 1, report, mode="auto") == "promoted"
    assert repo.stable() == 1
    # Each pushed version's training frame is kept; the stable one's is where the drift CronJob reads.
    refs = settings.references_dir / settings.model.name
    assert pd.read_parquet(refs / "1.parquet")["model"].tolist() == ["m1", "m1"]
    assert pd.read_parquet(refs / "stable.parquet")["model"].tolist() == ["m1", "m1"]

    # Later versions wait for a canary when no gateway answers, and are promoted only when asked to.
    assert _push(settings, tmp_path, "m2") == 2
    assert (
        rollout(
            str(settings.workdir), _settings_json(settings), 2, _art(Markdown, tmp_path / "r2"), mode="auto"
        )
        == "pending"
    )
    assert repo.stable() == 1
    assert "waits" in Path(tmp_path / "r2").read_text()
    assert (
        rollout(
            str(settings.workdir),
            _settings_json(settings),
            2,
            _art(Markdown, tmp_path / "r3"),
            mode="promote",
        )
        == "promoted"
    )
    assert repo.stable() == 2
    assert pd.read_parquet(refs / "stable.parquet")["model"].tolist() == ["m2", "m2"]
    assert json.loads((refs / "stable.json").read_text()) == {"version": 2}
    with pytest.raises(ValueError, match="rollout mode"):
        rollout(
            str(settings.workdir),
            _settings_json(settings),
            2,
            _art(Markdown, tmp_path / "r4"),
            mode="sideways",
        )


def test_push_refuses_without_a_passed_infra_check(settings, tmp_path):
    from freshrec.components.push.component import push
    from freshrec.model.repository import ModelRepository

    blessing = tmp_path / "b.json"
    blessing.write_text(json.dumps({"candidate": {}, "blessing": {}, "production_version": None}))
    with pytest.raises(RuntimeError, match="infra check"):
        push(
            str(settings.workdir),
            _settings_json(settings),
            _art(Model, _fake_export(tmp_path / "m")),
            _art(Artifact, blessing),
            _art(Dataset, tmp_path / "t"),
            False,
        )
    assert ModelRepository(settings.models_dir, settings.model.name).versions() == []


# ------------------------------------------------------------------------------------------ the heavy chain


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Synthetic data prepared into a workdir, then ingest → features → training set, run as plain calls."""
    from freshrec.components.features.component import features
    from freshrec.components.ingest.component import ingest
    from freshrec.components.training_set.component import training_set
    from freshrec.config import load_settings
    from freshrec.data.prepare import prepare_dataset
    from freshrec.data.synthetic import SyntheticConfig, generate

    root = tmp_path_factory.mktemp("chain")
    repo_root = Path(__file__).resolve().parents[2]
    settings = load_settings(
        workdir=root / "work",
        data={"dataset": "synthetic", "datasets_dir": str(repo_root.parent / "shared" / "datasets")},
        features={"repo_dir": str(repo_root / "feature_repo")},
        model={"embedding_dim": 4, "deep_units": [16], "id_hash_buckets": 1000},
        training={"batch_size": 256},
        blessing={"max_calibration_error": 0.5, "min_auc": 0.5, "max_logloss": 1.0},
    )
    prepare_dataset(
        generate(SyntheticConfig(n_users=150, n_items=80, n_events=4000, days=8, seed=3)), settings
    )
    a = {name: root / name for name in ("events", "train", "valid", "test")}
    events = _art(Dataset, a["events"])
    ingest(
        str(settings.workdir),
        _settings_json(settings),
        events,
        _art(Metrics, root / "im"),
        _art(Markdown, root / "ir"),
    )
    end = features(
        str(settings.workdir), _settings_json(settings), events, _art(Markdown, root / "features.md")
    )
    splits = {k: _art(Dataset, a[k]) for k in ("train", "valid", "test")}
    split_metrics = _art(Metrics, root / "sm")
    training_set(
        str(settings.workdir),
        _settings_json(settings),
        events,
        splits["train"],
        splits["valid"],
        splits["test"],
        split_metrics,
    )
    return {"settings": settings, "root": root, "end": end, "splits": splits, "split_metrics": split_metrics}


@pytest.mark.slow
def test_features_and_training_set_write_time_ordered_splits(chain):
    from freshrec.features.activity import ITEM_ACTIVITY, USER_ACTIVITY

    assert chain["end"].startswith("2024-01-0")
    parts = {k: pd.read_parquet(v.path) for k, v in chain["splits"].items()}
    sizes = {k: len(v) for k, v in parts.items()}
    assert sum(sizes.values()) == 4000
    assert sizes["train"] == pytest.approx(3200, abs=2) and sizes["test"] == pytest.approx(400, abs=2)
    assert parts["train"]["event_timestamp"].max() <= parts["valid"]["event_timestamp"].min()
    assert parts["valid"]["event_timestamp"].max() <= parts["test"]["event_timestamp"].min()
    for col in [*USER_ACTIVITY, *ITEM_ACTIVITY, "user_age", "item_genres"]:
        assert col in parts["train"].columns
    assert chain["split_metrics"].metadata["train_rows"] == sizes["train"]
    assert chain["splits"]["train"].metadata["rows"] == sizes["train"]
    assert "materialized" in (chain["root"] / "features.md").read_text()


@pytest.mark.slow
def test_data_quality_passes_on_its_own_window_and_fails_on_broken_data(chain, tmp_path):
    from freshrec.components.data_quality.component import data_quality

    s, splits = chain["settings"], chain["splits"]
    outs = [
        _art(HTML, tmp_path / "r.html"),
        _art(Markdown, tmp_path / "s.md"),
        _art(Metrics, tmp_path / "m"),
        _art(Artifact, tmp_path / "res.json"),
    ]
    ok = data_quality(str(s.workdir), _settings_json(s), splits["train"], splits["train"], *outs)
    assert ok.data_ok is True and ok.verdict == "ok"
    assert "<html" in Path(outs[0].path).read_text().lower()
    checked = json.loads(Path(outs[3].path).read_text())
    assert checked["verdict"] == "ok"
    # The columns come from the settings: identifiers and ignored columns are never compared.
    assert checked["features"] and set(checked["features"]).isdisjoint(s.drift.ignore_columns)
    assert "| user_age |" in Path(outs[1].path).read_text()

    broken = pd.read_parquet(splits["test"].path)
    broken["user_age"] = broken["user_age"].astype("float64")
    broken.loc[broken.index[::2], "user_age"] = float("nan")  # half missing: a quality failure
    broken.to_parquet(tmp_path / "broken.parquet")
    outs = [
        _art(HTML, tmp_path / "r2.html"),
        _art(Markdown, tmp_path / "s2.md"),
        _art(Metrics, tmp_path / "m2"),
        _art(Artifact, tmp_path / "res2.json"),
    ]
    bad = data_quality(
        str(s.workdir), _settings_json(s), splits["train"], _art(Dataset, tmp_path / "broken.parquet"), *outs
    )
    assert bad.data_ok is False and bad.verdict == "quality_failure"
    assert "user_age" in Path(outs[1].path).read_text()


@pytest.mark.slow
def test_train_evaluate_infra_check_push(chain, tmp_path):
    from freshrec.components.evaluate.component import evaluate
    from freshrec.components.infra_check.component import infra_check
    from freshrec.components.push.component import push
    from freshrec.components.train.component import train
    from freshrec.model.export import load_spec
    from freshrec.model.repository import ModelRepository

    s, splits = chain["settings"], chain["splits"]
    model, train_metrics = _art(Model, tmp_path / "model"), _art(Metrics, tmp_path / "tm")
    train(str(s.workdir), _settings_json(s), splits["train"], splits["valid"], model, train_metrics, epochs=1)
    assert (Path(model.path) / "saved_model.pb").is_file()
    assert model.metadata["parent_version"] == -1 and "val_auc" in train_metrics.metadata

    outs = {
        "metrics": _art(Metrics, tmp_path / "em"),
        "curves": _art(ClassificationMetrics, tmp_path / "curves"),
        "report": _art(Markdown, tmp_path / "eval.md"),
        "blessing": _art(Artifact, tmp_path / "blessing.json"),
    }
    result = evaluate(str(s.workdir), _settings_json(s), model, splits["train"], splits["test"], **outs)
    assert 0.0 <= result.auc <= 1.0 and outs["metrics"].metadata["auc"] == pytest.approx(result.auc)
    roc = outs["curves"].metadata["confidenceMetrics"]
    assert 2 <= len(roc) <= 200 and {"falsePositiveRate", "recall", "confidenceThreshold"} <= set(roc[0])
    matrix = outs["curves"].metadata["confusionMatrix"]["rows"]
    assert sum(sum(r["row"]) for r in matrix) == len(pd.read_parquet(splits["test"].path))
    saved = json.loads(Path(outs["blessing"].path).read_text())
    assert saved["blessing"]["blessed"] is result.blessed and saved["production_version"] is None
    assert "Candidate vs production" in Path(outs["report"].path).read_text()
    # The evaluation artefact explains the candidate: every raw input attributed, slices beside them.
    assert len(saved["explanation"]["features"]) == len(load_spec(model.path).input_names)
    assert "Permutation importance on AUC" in Path(outs["report"].path).read_text()

    assert infra_check(model, splits["test"], _art(Metrics, tmp_path / "im")) is True
    version = push(str(s.workdir), _settings_json(s), model, outs["blessing"], splits["train"], True)
    assert ModelRepository(s.models_dir, s.model.name).versions() == [version]
    explained = ModelRepository(s.models_dir, s.model.name).metadata(version)["explanation"]
    assert explained["features"] == saved["explanation"]["features"]
