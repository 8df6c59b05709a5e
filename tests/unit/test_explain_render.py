"""The explanations' renderers (run report section, KFP Markdown) and the run record's field."""

from __future__ import annotations

import numpy as np

from freshrec.model.explain import occlusion, permutation_importance, render_markdown
from freshrec.report import RunRecord, render


def _explanation():
    rng = np.random.default_rng(0)
    import pandas as pd

    n = 2000
    frame = pd.DataFrame({"signal": rng.normal(size=n), "noise": rng.normal(size=n)})
    frame["label"] = (frame["signal"] + 0.3 * rng.normal(size=n) > 0).astype(int)
    expl = permutation_importance(
        lambda df: 1 / (1 + np.exp(-3 * df["signal"].to_numpy())), frame, ["noise", "signal"]
    )
    expl.version = 4
    expl.slices = {"new_users": {"n": 10.0, "auc": 0.7, "logloss": 0.6, "ece": None}}
    return expl


def test_permutation_importance_of_a_function_model():
    expl = _explanation()
    assert [f.feature for f in expl.features] == ["signal", "noise"]
    assert expl.features[1].auc_drop == 0.0  # the model ignores noise: shuffling it changes nothing
    assert "| 1 | signal |" in render_markdown(expl) and "new_users" in render_markdown(expl)


def test_occlusion_contributions_are_score_differences():
    cols = {"a": np.array([1.0, 2.0, 3.0], dtype=np.float32), "s": np.array(["x", "", "y"], dtype=object)}

    def predict(c, n):
        return np.asarray(c["a"], dtype=np.float64) * 0.1 + (np.asarray(c["s"]) != "") * 0.5

    out = occlusion(predict, cols, rows=[2, 0], features=["a", "s"], top=2)
    assert [f["feature"] for f in out[0]] == ["s", "a"] and [f["feature"] for f in out[1]] == ["s", "a"]
    assert np.allclose([f["contribution"] for f in out[0]], [0.5, 0.3])  # row 2: a=3 -> 0, s="y" -> ""
    assert np.allclose([f["contribution"] for f in out[1]], [0.5, 0.1])  # row 0: a=1 -> 0


def test_report_shows_the_explanations_section(tmp_path):
    record = RunRecord(run_id="r1", dataset="d", explanations=[_explanation().to_dict()])
    record.save(tmp_path / "run.json")
    page = render(RunRecord.load(tmp_path / "run.json"), tmp_path / "out").read_text()
    section = page[page.index("<h2>Explanations</h2>") :]
    assert "version 4" in section and section.index("signal") < section.index("noise")
    assert "new_users" in section
    empty = render(RunRecord(run_id="r2", dataset="d"), tmp_path / "out2").read_text()
    assert "no version was explained" in empty
