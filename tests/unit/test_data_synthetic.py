"""The synthetic generator: seeded, in the event schema, with known preferences and visible drift."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from freshrec.data.synthetic import SyntheticConfig, generate
from freshrec.data.validation import EVENT_COLUMNS, validate_events


def roc_auc_score(labels: pd.Series, scores: np.ndarray) -> float:
    """AUC from ranks (Mann-Whitney U); avoids importing scikit-learn for one number."""
    ranks = pd.Series(scores).rank().to_numpy()
    pos = labels.to_numpy() == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


DRIFT = dict(
    seed=5,
    n_events=40_000,
    drift_at=0.5,
    new_items=50,
    new_item_share=0.4,
    new_users=100,
    new_user_share=0.3,
    segment_weights=[0.25, 0.25, 0.25, 0.25],
    segment_weights_after=[0.7, 0.1, 0.1, 0.1],
    ctr_shift=-1.0,
)


@pytest.fixture(scope="module")
def drifted():
    return generate(SyntheticConfig(**DRIFT))


def test_schema_matches_the_event_contract_and_validates():
    ds = generate(n_events=5000, seed=1)
    ev = ds.events
    assert list(ev.columns) == list(EVENT_COLUMNS)
    assert str(ev["event_timestamp"].dtype) == "datetime64[ns, UTC]" and ev["label"].dtype == "int8"
    assert ev["event_timestamp"].is_monotonic_increasing and ev["event_id"].is_unique
    assert set(ev["user_id"]) <= set(ds.users["user_id"]) and set(ev["item_id"]) <= set(ds.items["item_id"])
    assert list(ds.users.columns) == ["user_id", *ds.description.user_features]
    assert list(ds.items.columns) == ["item_id", *ds.description.item_features]
    assert ds.users["user_age"].dtype == "int64" and ds.items["item_year"].dtype == "int64"
    assert all(g == "|".join(sorted(g.split("|"))) for g in ds.items["item_genres"] if g)
    assert len(validate_events(ev).accepted) == len(ev)


def test_seeded_and_reproducible():
    a, b, c = (
        generate(n_events=3000, seed=1),
        generate(n_events=3000, seed=1),
        generate(n_events=3000, seed=2),
    )
    pd.testing.assert_frame_equal(a.events, b.events)
    pd.testing.assert_frame_equal(a.users, b.users)
    assert not a.events["label"].equals(c.events["label"]) or not a.events["user_id"].equals(
        c.events["user_id"]
    )


def test_base_ctr_is_calibrated_and_labels_follow_the_known_preferences():
    ds = generate(n_events=20_000, seed=3, base_ctr=0.25)
    ev = ds.events
    assert abs(ev["label"].mean() - 0.25) < 0.02
    p = ds.truth["p_click"]
    assert roc_auc_score(ev["label"], p) > 0.75
    # the truth is the model: recompute p from the factors
    uf = ds.truth["user_factors"].set_index("user_id")
    itf = ds.truth["item_factors"].set_index("item_id")
    u, i = np.stack(uf.loc[ev["user_id"], "vector"]), np.stack(itf.loc[ev["item_id"], "vector"])
    cfg = ds.truth["config"]
    logit = (
        cfg.preference_strength * (u * i).sum(1) / np.sqrt(cfg.latent_dim)
        + uf.loc[ev["user_id"], "bias"].to_numpy()
        + itf.loc[ev["item_id"], "bias"].to_numpy()
        + ds.truth["bias"]
    )
    np.testing.assert_allclose(1 / (1 + np.exp(-logit)), p, rtol=1e-9)


def test_drift_is_visible_after_the_drift_time(drifted):
    ev, truth = drifted.events, drifted.truth
    t = truth["drift_at"]
    assert t == pd.Timestamp("2024-01-16", tz="UTC")
    before, after = ev[ev["event_timestamp"] < t], ev[ev["event_timestamp"] >= t]
    new_items, new_users = truth["new_item_ids"], truth["new_user_ids"]
    assert before["item_id"].isin(new_items).mean() == 0 and before["user_id"].isin(new_users).mean() == 0
    assert abs(after["item_id"].isin(new_items).mean() - 0.4) < 0.02
    assert abs(after["user_id"].isin(new_users).mean() - 0.3) < 0.02
    seg = truth["user_factors"].set_index("user_id")["segment"]
    old_after = after[~after["user_id"].isin(new_users)]
    share_before = (seg.loc[before["user_id"]] == 0).mean()
    share_after = (seg.loc[old_after["user_id"]] == 0).mean()
    assert share_before < 0.35 and share_after > 0.6
    assert after["label"].mean() < before["label"].mean() - 0.05  # CTR drop
    # new items carry the drift year
    items = drifted.items.set_index("item_id")
    assert (items.loc[list(new_items), "item_year"] == 2024).all()


def test_no_drift_by_default():
    ev = generate(n_events=20_000, seed=4).events
    half = ev["event_timestamp"] >= ev["event_timestamp"].iloc[len(ev) // 2]
    assert abs(ev.loc[half, "label"].mean() - ev.loc[~half, "label"].mean()) < 0.03


def test_config_is_validated():
    with pytest.raises(ValueError, match="new_item_share"):
        SyntheticConfig(new_item_share=0.2)
    with pytest.raises(ValueError, match="segment_weights"):
        SyntheticConfig(segment_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="base_ctr"):
        SyntheticConfig(base_ctr=1.5)


def test_100k_events_generate_fast():
    generate(n_events=1000)  # warm-up (imports, first description load)
    started = time.perf_counter()
    ds = generate(n_events=100_000, seed=9)
    elapsed = time.perf_counter() - started
    assert len(ds.events) == 100_000
    assert elapsed < 2.0, f"100k synthetic events took {elapsed:.2f} s"  # < 1 s on an idle core
