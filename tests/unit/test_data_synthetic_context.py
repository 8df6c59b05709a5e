"""The context CTR generator: seeded, FM ground truth, three files read back through its description."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from freshrec.data.datasets import load_dataset, load_description
from freshrec.data.synthetic import ContextConfig, generate_context
from freshrec.features.training_set import training_frames
from freshrec.training.metrics import auc

SMALL = dict(n_users=50, n_items=30, n_events=6000, seed=3)


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = generate_context(**SMALL), generate_context(**SMALL), generate_context(**{**SMALL, "seed": 4})
    for split in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(a.splits[split], b.splits[split])
        np.testing.assert_array_equal(a.p_click[split], b.p_click[split])
    assert not a.splits["test"]["clicked"].equals(c.splits["test"]["clicked"])


def test_labels_follow_the_factorisation_machine():
    data = generate_context(**SMALL)
    cfg = data.config
    f = data.factors
    frame = data.splits["train"]
    idx = {
        "user": frame["user"].str[1:].astype(int).to_numpy(),
        "item": frame["item"].str[1:].astype(int).to_numpy(),
        **{c: frame[c].str[len(c) :].astype(int).to_numpy() for c in cfg.context_fields},
    }
    logit = data.bias + sum(f[f"w_{k}"][i] for k, i in idx.items())
    vu, vi = f["v_user"][idx["user"]], f["v_item"][idx["item"]]
    cross = (vu * vi).sum(1)
    for c in cfg.context_fields:
        vc = f[f"v_{c}"][idx[c]]
        cross += (vu * vc).sum(1) + (vi * vc).sum(1)
    p = 1 / (1 + np.exp(-(logit + cfg.interaction_scale * cross)))
    np.testing.assert_allclose(data.p_click["train"], p, rtol=1e-9)
    # the mean CTR is what was asked for, and the labels are draws of p (calibrated by construction)
    everything = np.concatenate(list(data.p_click.values()))
    assert everything.mean() == pytest.approx(cfg.base_ctr, abs=1e-6)
    assert frame["clicked"].mean() == pytest.approx(data.p_click["train"].mean(), abs=0.02)


def test_split_sizes_follow_the_fractions_rounded_half_up():
    data = generate_context(**{**SMALL, "n_events": 1005, "split_fractions": (0.7, 0.2, 0.1)})
    assert [len(data.splits[s]) for s in ("train", "valid", "test")] == [704, 201, 100]  # 703.5 -> 704
    ids = pd.concat([data.splits[s]["impression"] for s in data.splits])
    assert ids.is_unique and len(ids) == 1005


def test_files_read_back_through_the_description_and_oracle_is_the_true_probability(tmp_path):
    data = generate_context(**SMALL)
    paths = data.write(tmp_path / "synthetic-context")
    assert sorted(p.name for p in paths.values()) == ["test.parquet", "train.parquet", "valid.parquet"]
    desc = load_description("synthetic-context")
    assert desc.split == "files" and not desc.activity_enabled
    assert set(desc.event_features) == {"ctx_device", "ctx_slot", "ctx_hour"}
    ds = load_dataset(desc, tmp_path)
    assert ds.rejected is None or len(ds.rejected) == 0
    frames = dict(zip(("train", "valid", "test"), training_frames(ds), strict=True))
    for split, frame in frames.items():
        raw = data.splits[split].set_index("impression")
        assert len(frame) == len(raw)
        assert set(frame["event_id"]) == set(raw.index)
        # labels and context values arrive unchanged, row by row
        got = frame.set_index("event_id").loc[raw.index]
        np.testing.assert_array_equal(got["label"].to_numpy(), raw["clicked"].to_numpy())
        np.testing.assert_array_equal(got["ctx_hour"].to_numpy(), raw["hour"].to_numpy())
        assert not any(c.startswith(("user_n_", "item_n_")) for c in frame.columns)  # no activity features
    test = frames["test"]
    oracle = data.oracle("test").loc[test["event_id"]].to_numpy()
    oracle_auc = auc(test["label"].to_numpy(), oracle)
    # the true probabilities beat any one field's empirical CTR, and the first-order part alone
    assert oracle_auc > 0.7
    by_item = frames["train"].groupby("item_id")["label"].mean()
    assert oracle_auc > auc(test["label"].to_numpy(), test["item_id"].map(by_item).fillna(0.25).to_numpy())


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="split_fractions"):
        ContextConfig(split_fractions=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="context_fields"):
        ContextConfig(context_fields={})
