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


def test_the_readme_shows_the_shipped_description():
    import re
    from pathlib import Path

    import yaml

    from freshrec.data.datasets import DatasetDescription

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme.split("## Your own dataset")[1], re.S)
    shown = [b for b in blocks if "name: synthetic-context" in b]
    assert len(shown) == 1
    readme_desc = DatasetDescription.model_validate(yaml.safe_load(shown[0]))
    shipped = load_description("synthetic-context")
    assert readme_desc.events == shipped.events and readme_desc.split == shipped.split


# --------------------------------------------------- the documented properties of the defaults (ContextConfig)


def _codes(data, split: str) -> dict[str, np.ndarray]:
    frame = data.splits[split]
    return {
        "user": frame["user"].str[1:].astype(int).to_numpy(),
        "item": frame["item"].str[1:].astype(int).to_numpy(),
        **{c: frame[c].str[len(c) :].astype(int).to_numpy() for c in data.config.context_fields},
    }


def _fit(data, pairs: list[tuple[str, str]], l2: float = 1e-5):
    """Maximum-likelihood fit (L-BFGS, L2 ``l2`` on the factors) on the train split of a logistic model with
    one weight per field value and, for each pair of fields in ``pairs``, a rank-``factor_dim`` product of
    their factors: the generator's own form when ``pairs`` are its crosses, a logistic regression when
    ``pairs`` is empty. Returns a function from a split's codes to logits."""
    from scipy.optimize import minimize

    cfg = data.config
    sizes = {"user": cfg.n_users, "item": cfg.n_items, **cfg.context_fields}
    k, fields = cfg.factor_dim, list(sizes)
    factored = sorted({f for pair in pairs for f in pair})
    shapes = [("b", (1,))] + [(f"w_{f}", (sizes[f],)) for f in fields]
    shapes += [(f"v_{f}", (sizes[f], k)) for f in factored]
    cuts = np.cumsum([0] + [int(np.prod(s)) for _, s in shapes])

    def unpack(theta):
        return {n: theta[a:b].reshape(s) for (n, s), a, b in zip(shapes, cuts[:-1], cuts[1:], strict=True)}

    def logits(p, idx):
        z = p["b"][0] + sum(p[f"w_{f}"][idx[f]] for f in fields)
        return z + sum((p[f"v_{a}"][idx[a]] * p[f"v_{b}"][idx[b]]).sum(1) for a, b in pairs)

    idx, y = _codes(data, "train"), data.splits["train"]["clicked"].to_numpy(dtype=float)

    def loss_and_grad(theta):
        p = unpack(theta)
        z = logits(p, idx)
        g = (1 / (1 + np.exp(-z)) - y) / len(y)
        grad = {"b": np.array([g.sum()]), **{f"w_{f}": np.bincount(idx[f], g, sizes[f]) for f in fields}}
        loss = np.mean(np.logaddexp(0, z) - y * z)
        for f in factored:
            grad[f"v_{f}"] = 2 * l2 * p[f"v_{f}"]
            loss += l2 * np.sum(p[f"v_{f}"] ** 2)
        for a, b in pairs:
            for this, other in ((a, b), (b, a)):
                weighted = g[:, None] * p[f"v_{other}"][idx[other]]
                for j in range(k):
                    grad[f"v_{this}"][:, j] += np.bincount(idx[this], weighted[:, j], sizes[this])
        return loss, np.concatenate([grad[n].ravel() for n, _ in shapes])

    theta0 = np.random.default_rng(0).normal(scale=0.05, size=cuts[-1])
    fitted = unpack(minimize(loss_and_grad, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 3000}).x)
    return lambda codes: logits(fitted, codes)


def _test_aucs(data, pairs):
    y = data.splits["test"]["clicked"].to_numpy()
    return auc(y, data.p_click["test"]), auc(y, _fit(data, pairs)(_codes(data, "test")))


def _crosses(data) -> list[tuple[str, str]]:
    return [("user", "item")] + [(a, c) for a in ("user", "item") for c in data.config.context_fields]


def test_defaults_leave_every_id_many_rows_and_a_logistic_regression_far_below_the_oracle():
    data = generate_context(seed=0)
    cfg, train = data.config, data.splits["train"]
    assert (cfg.n_users, cfg.n_items, cfg.n_events, cfg.interaction_scale) == (50, 25, 300_000, 0.5)
    # every id is seen often enough in training to pin its factors down
    assert train["user"].nunique() == cfg.n_users and train["item"].nunique() == cfg.n_items
    assert train["user"].value_counts().min() > 2000 and train["item"].value_counts().min() > 2000
    # the crosses matter: the best first-order model of the same fields is at least 0.03 AUC below
    oracle, lr = _test_aucs(data, pairs=[])
    assert oracle - lr >= 0.03


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_defaults_are_learnable_a_true_form_fm_gets_within_0_005_of_the_oracle(seed):
    # An FM of the generator's own form fitted on the train rows alone: what is left to the oracle is
    # estimation error, and the defaults keep it under the benchmark's target for DCN-V2 (0.005).
    data = generate_context(seed=seed)
    oracle, fm = _test_aucs(data, _crosses(data))
    assert oracle - fm <= 0.005


@pytest.mark.slow
def test_with_many_ids_per_row_even_the_true_form_fm_stays_short_of_the_oracle():
    # The control for the test above: the old defaults (400 users, 200 items, 150,000 events) ask for more
    # parameters than their rows pin down, and the same fit stops more than 0.005 short (0.012 on seed 0).
    data = generate_context(seed=0, n_users=400, n_items=200, n_events=150_000, interaction_scale=0.3)
    oracle, fm = _test_aucs(data, _crosses(data))
    assert oracle - fm > 0.005
