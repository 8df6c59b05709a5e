"""Explanations on a real (small) DCN-V2: the planted feature ranks first; ``freshrec explain`` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from benchmarks.bench_explain_compress import PLANTED, planted_frame, planted_spec, train_planted
from freshrec.cli import _register, app
from freshrec.model.explain import (
    Explanation,
    keras_predictor,
    occlusion,
    permutation_importance,
    render_markdown,
)

_register()
runner = CliRunner()


@pytest.fixture(scope="module")
def planted():
    frame = planted_frame(4000, seed=1)
    train, test = frame.iloc[:3000], frame.iloc[3000:].reset_index(drop=True)
    return train_planted(train, epochs=4, seed=1), train, test


def test_planted_feature_ranks_first(planted):
    model, train, test = planted
    names = planted_spec(train).input_names
    expl = permutation_importance(keras_predictor(model), test, names, repeats=2, seed=3)
    assert expl.rank_of(PLANTED) == 1, expl.features
    assert expl.features[0].auc_drop > 0.1 > max(abs(f.auc_drop) for f in expl.features[1:])
    assert expl.base_auc > 0.75
    # A round trip through JSON keeps the ranking; the Markdown names the planted feature first.
    again = Explanation.from_dict(json.loads(json.dumps(expl.to_dict())))
    assert [f.feature for f in again.features] == [f.feature for f in expl.features]
    md = render_markdown(again)
    assert md.index(PLANTED) < min(md.index(n) for n in names if n != PLANTED)


def test_permutation_importance_rejects_bad_windows(planted):
    model, train, test = planted
    names = planted_spec(train).input_names
    with pytest.raises(ValueError, match="single class"):
        permutation_importance(keras_predictor(model), test.assign(label=1), names)
    with pytest.raises(ValueError, match="lacks columns"):
        permutation_importance(keras_predictor(model), test.drop(columns=[PLANTED]), names)


def test_occlusion_names_the_planted_feature(planted):
    model, train, test = planted
    spec = planted_spec(train)
    predict = keras_predictor(model)
    from freshrec.model.spec import frame_to_inputs

    columns = frame_to_inputs(test.iloc[:20], spec)

    def by_columns(cols, n):
        import pandas as pd

        return predict(pd.DataFrame({k: np.asarray(v) for k, v in cols.items()}))

    out = occlusion(by_columns, columns, rows=range(10), features=spec.input_names, top=3)
    assert len(out) == 10 and all(len(r) == 3 for r in out)
    assert sum(r[0]["feature"] == PLANTED for r in out) >= 8, out


def test_explain_cli(planted, tmp_path):
    from freshrec.model.export import export_model
    from freshrec.model.repository import ModelRepository

    model, _, test = planted
    work = tmp_path / "work"
    repo = ModelRepository(work / "models", "ctr")
    version = repo.publish(export_model(model, tmp_path / "export"), {"parent_version": None})
    window = tmp_path / "window.parquet"
    test.to_parquet(window)

    res = runner.invoke(
        app, ["-w", str(work), "explain", "--version", str(version), "--frame", str(window), "-o", "json"]
    )
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert got["version"] == version and got["features"][0]["feature"] == PLANTED
    assert Explanation.load(next(work.rglob(f"ctr-v{version}.json"))).rank_of(PLANTED) == 1

    res = runner.invoke(app, ["-w", str(work), "explain", "--version", str(version), "--frame", str(window)])
    assert res.exit_code == 0, res.output
    assert PLANTED in res.output and "AUC drop" in res.output

    res = runner.invoke(app, ["-w", str(work), "explain", "--version", "7", "--frame", str(window)])
    assert (
        res.exit_code == 2
        and "no servable version 7" in " ".join(res.output.split())
        and "Traceback" not in res.output
    )
    res = runner.invoke(
        app, ["-w", str(work), "explain", "--version", str(version), "--frame", str(tmp_path / "x.txt")]
    )
    assert res.exit_code == 2 and "not a file" in " ".join(res.output.split())
