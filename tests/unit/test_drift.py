"""Drift and data-quality checks: injected drift is found where it was injected, and nowhere else."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from freshrec.config import DriftSettings
from freshrec.data.synthetic import generate
from freshrec.monitoring.drift import (
    DriftResult,
    ReferenceProfile,
    check_drift,
    wasserstein_exact,
    wasserstein_norm_bounded,
)

USER = ["user_gender", "user_age", "user_occupation", "user_zip_prefix"]
ITEM = ["item_genres", "item_year"]


def _windows(**drift) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Synthetic events with profiles, split at the drift time (or the middle)."""
    ds = generate(seed=7, n_events=20_000, n_users=800, n_items=400, drift_at=0.5, **drift)
    frame = ds.events.merge(ds.users, on="user_id").merge(ds.items, on="item_id")
    cut = ds.truth["drift_at"]
    before = frame[frame.event_timestamp < cut]
    after = frame[frame.event_timestamp >= cut]
    return before[USER + ITEM + ["label"]], after[USER + ITEM + ["label"]]


def test_segment_shift_is_found_in_user_features_only():
    ref, cur = _windows(segment_weights_after=[0.7, 0.1, 0.1, 0.1])
    result = check_drift(ref, cur, USER + ITEM, DriftSettings(), None, html=False)
    assert result.drifted_features == sorted(USER)
    assert not any(result.features[c].drifted for c in ITEM)
    assert result.dataset_drift and result.verdict == "drift"
    assert result.drift_share == pytest.approx(4 / 6)


def test_new_items_are_found_in_item_year_only():
    ref, cur = _windows(new_items=100, new_item_share=0.5)
    result = check_drift(ref, cur, USER + ITEM, DriftSettings(), None, html=False)
    assert "item_year" in result.drifted_features
    assert not any(result.features[c].drifted for c in USER)
    assert not result.dataset_drift  # 1 (or 2) of 6 columns: below the 0.5 share
    assert result.verdict == "ok"


def test_ctr_shift_is_target_drift_not_feature_drift():
    ref, cur = _windows(ctr_shift=1.0)
    result = check_drift(ref, cur, USER + ITEM, DriftSettings(), None, html=False)
    assert result.drifted_features == []
    assert result.target_drift is not None and result.target_drift.drifted
    assert result.target_drift.current_rate > result.target_drift.reference_rate + 0.05
    assert result.verdict == "drift"
    assert "target rate" in result.reason


def test_same_distribution_gives_no_drift():
    ref, cur = _windows()  # no drift configured: both halves come from the same process
    result = check_drift(ref, cur, USER + ITEM, DriftSettings(), None, html=False)
    assert result.drifted_features == []
    assert result.quality_failures == []
    assert result.verdict == "ok"
    assert all(f.score < f.threshold / 2 for f in result.features.values())


def _random_frame(rng: np.random.Generator, n: int, shift: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "num": rng.normal(shift, 1.0, n),
            "skewed": rng.exponential(1.0 + shift, n),
            "small_int": rng.integers(0, 4, n),  # few values: compared as categories, as Evidently does
            "cat": rng.choice(["a", "b", "c", "d"], n, p=[0.4, 0.3, 0.2, 0.1] if shift else None),
            "score": rng.beta(2, 5 + 3 * shift, n),
            "label": rng.integers(0, 2, n),
        }
    )


@pytest.mark.slow
def test_scores_equal_evidentlys_and_report_is_saved(tmp_path):
    rng = np.random.default_rng(3)
    ref, cur = _random_frame(rng, 3000), _random_frame(rng, 2500, shift=0.4)
    settings = DriftSettings(column_methods={"skewed": "psi"})
    result = check_drift(ref, cur, ["num", "skewed", "small_int", "cat"], settings, tmp_path, stem="r1")
    assert result.report_sample_rows == {"reference": 3000, "current": 2500}  # Evidently saw every row
    for name, feat in result.features.items():
        assert feat.report_score is not None, name
        assert abs(feat.score - feat.report_score) <= feat.error_bound + 1e-9, name
    assert result.features["skewed"].method == "psi"
    assert result.features["small_int"].method == "jensenshannon"
    assert result.prediction_drift is not None and result.prediction_drift.drifted
    assert result.json_path == tmp_path / "r1.json" and result.html_path == tmp_path / "r1.html"
    assert result.html_path.stat().st_size > 10_000
    loaded = DriftResult.load(result.json_path)
    assert loaded.features == result.features and loaded.verdict == result.verdict


@pytest.mark.slow
def test_method_without_fast_path_is_computed_by_evidently(tmp_path):
    rng = np.random.default_rng(4)
    ref, cur = _random_frame(rng, 1500), _random_frame(rng, 1500, shift=0.5)
    settings = DriftSettings(column_methods={"num": "ks"}, column_thresholds={"num": 0.05})
    result = check_drift(ref, cur, ["num", "cat"], settings, tmp_path, html=False)
    feat = result.features["num"]
    assert feat.method == "ks" and feat.score < 1e-6 and feat.drifted  # a p-value: drift when small
    assert feat.score == feat.report_score


def test_wasserstein_bound_holds_and_exact_matches_scipy():
    rng = np.random.default_rng(5)
    for shift, n, m in [(0.0, 5000, 4000), (0.3, 20_000, 3000), (2.0, 1000, 7000)]:
        a = np.sort(rng.standard_t(3, n))
        b = np.sort(rng.standard_t(3, m) + shift)
        est, bound, norm = wasserstein_norm_bounded(a, b)
        exact = wasserstein_exact(a, b)
        assert exact == pytest.approx(stats.wasserstein_distance(a, b), rel=1e-9)
        assert abs(est - exact / norm) <= bound + 1e-12


def test_borderline_wasserstein_is_settled_exactly():
    rng = np.random.default_rng(6)
    ref = pd.DataFrame({"x": rng.normal(0, 1, 4000)})
    cur = pd.DataFrame({"x": rng.normal(0.1, 1, 4000)})
    exact = wasserstein_exact(np.sort(ref.x.to_numpy()), np.sort(cur.x.to_numpy())) / ref.x.std(ddof=0)
    # A threshold right at the score forces the exact path; the verdict follows the exact value.
    settings = DriftSettings(numeric_threshold=float(exact) + 1e-6)
    feat = check_drift(ref, cur, ["x"], settings, None, html=False).features["x"]
    assert feat.exact and feat.error_bound == 0.0
    assert feat.score == pytest.approx(exact, rel=1e-9) and not feat.drifted


def test_quality_failures_on_a_bad_window():
    rng = np.random.default_rng(8)
    ref = _random_frame(rng, 2000)
    cur = _random_frame(rng, 2000)
    cur.loc[:599, "num"] = np.nan  # 30% missing
    cur.loc[:99, "skewed"] = 1e6  # 5% far outside the reference range
    cur.loc[:1499, "cat"] = "never-seen"  # 75% unseen categories
    cur = cur.drop(columns=["small_int"])
    result = check_drift(ref, cur, ["num", "skewed", "small_int", "cat"], DriftSettings(), None, html=False)
    failures = {(f.check, f.column) for f in result.quality_failures}
    assert failures == {
        ("missing_share", "num"),
        ("out_of_range", "skewed"),
        ("unseen_categories", "cat"),
        ("missing_column", "small_int"),
    }
    assert result.verdict == "quality_failure"
    assert result.quality["num"].missing_share == pytest.approx(0.3)
    assert result.quality["skewed"].out_of_range_share == pytest.approx(0.05)
    assert result.quality["cat"].unseen_category_share == pytest.approx(0.75)


def test_good_window_has_no_quality_failures_and_exempt_counters_pass():
    rng = np.random.default_rng(9)
    ref = pd.DataFrame({"user_events_total": rng.integers(0, 50, 1000), "x": rng.normal(size=1000)})
    cur = pd.DataFrame({"user_events_total": rng.integers(40, 200, 1000), "x": rng.normal(size=1000)})
    result = check_drift(ref, cur, None, DriftSettings(), None, html=False)
    assert result.quality["user_events_total"].out_of_range_share > 0.5
    assert result.quality_failures == []  # counters grow by design: exempt from the range check


@pytest.mark.parametrize("n_ref,n_cur", [(1000, 0), (1000, 20), (5, 1000)])
def test_tiny_or_empty_windows_say_not_enough_data(tmp_path, n_ref, n_cur):
    rng = np.random.default_rng(10)
    ref, cur = _random_frame(rng, n_ref), _random_frame(rng, n_cur)
    result = check_drift(ref, cur, ["num", "cat"], DriftSettings(min_rows=100), tmp_path)
    assert result.verdict == "not_enough_data"
    assert "not enough data" in result.reason and f"current has {n_cur} rows" in result.reason
    assert result.features == {} and result.html_path is None
    assert DriftResult.load(result.json_path).verdict == "not_enough_data"


def test_train_serve_skew_is_found_per_feature():
    rng = np.random.default_rng(11)
    n = 1000
    offline = pd.DataFrame(
        {"user_id": [f"u{i}" for i in range(n)], "item_id": "i1", "num": rng.normal(size=n), "cat": "a"}
    )
    served = offline.copy()
    served.loc[:49, "num"] += 0.5  # 5% of served values differ from the offline computation
    result = check_drift(
        offline, served, ["num", "cat"], DriftSettings(), None, html=False, served=served, offline=offline
    )
    assert result.skew["num"].mismatch_share == pytest.approx(0.05)
    assert result.skew["cat"].mismatch_share == 0.0
    assert [(f.check, f.column) for f in result.quality_failures] == [("skew", "num")]


def test_reference_profile_is_cached_per_key(tmp_path):
    rng = np.random.default_rng(12)
    ref, cur = _random_frame(rng, 2000), _random_frame(rng, 2000, shift=0.3)
    cache = tmp_path / "profiles"
    first = check_drift(
        ref,
        cur,
        ["num", "cat"],
        DriftSettings(),
        None,
        html=False,
        profile_cache_dir=cache,
        cache_key="ctr-v1",
    )
    (entry,) = list(cache.iterdir())
    # A second check with different reference rows but the same key reuses the cached profile.
    second = check_drift(
        ref.iloc[:500],
        cur,
        ["num", "cat"],
        DriftSettings(),
        None,
        html=False,
        profile_cache_dir=cache,
        cache_key="ctr-v1",
    )
    assert second.n_reference == 2000 and second.profile_key == "ctr-v1"
    assert {n: f.score for n, f in second.features.items()} == {n: f.score for n, f in first.features.items()}
    loaded = ReferenceProfile.load(entry)
    assert np.array_equal(loaded.sorted_values["num"], np.sort(ref["num"].to_numpy()))


def test_unknown_column_is_a_clear_error():
    frame = pd.DataFrame({"a": range(200)})
    with pytest.raises(ValueError, match="'nope' is not in the reference"):
        check_drift(frame, frame, ["nope"], DriftSettings(), None, html=False)


def test_no_columns_named_skips_ids_timestamps_score_and_label():
    rng = np.random.default_rng(13)
    n = 500

    def frame() -> pd.DataFrame:
        return pd.DataFrame(
            {
                "event_id": [f"e{i}" for i in rng.permutation(10 * n)[:n]],
                "event_timestamp": pd.date_range("2024-01-01", periods=n, freq="min", tz="UTC"),
                "user_id": [f"u{i}" for i in rng.integers(0, 10 * n, n)],
                "x": rng.normal(size=n),
                "score": rng.random(n),
                "label": rng.integers(0, 2, n),
            }
        )

    result = check_drift(frame(), frame(), None, DriftSettings(), None, html=False)
    assert list(result.columns) == ["x"]
    assert result.quality_failures == [] and result.verdict == "ok"
    assert result.prediction_drift is not None and result.target_drift is not None


def test_model_feature_spec_selects_only_the_models_columns():
    from freshrec.data.datasets import load_description
    from freshrec.model.spec import FeatureSpec

    ds = generate(
        seed=7,
        n_events=20_000,
        n_users=800,
        n_items=400,
        drift_at=0.5,
        segment_weights_after=[0.7, 0.1, 0.1, 0.1],
    )
    frame = ds.events.merge(ds.users, on="user_id").merge(ds.items, on="item_id")
    frame["unused_by_the_model"] = np.arange(len(frame), dtype=float)  # drifts, but the model ignores it
    ref = frame[frame.event_timestamp < ds.truth["drift_at"]]
    cur = frame[frame.event_timestamp >= ds.truth["drift_at"]]
    spec = FeatureSpec.for_description(load_description("synthetic"), frame=ref)
    result = check_drift(ref, cur, spec, DriftSettings(), None, html=False)
    assert result.columns == {
        "user_gender": "categorical",
        "user_age": "numeric",
        "user_occupation": "categorical",
        "user_zip_prefix": "categorical",
        "item_genres": "categorical",
        "item_year": "numeric",
    }
    assert result.drifted_features == sorted(USER)


def test_numeric_column_with_few_values_compares_as_categories_like_evidently():
    rng = np.random.default_rng(15)
    ref = pd.DataFrame({"stars": rng.choice([1.0, 2.0, 3.0], 2000), "x": rng.normal(size=2000)})
    cur = pd.DataFrame(
        {"stars": rng.choice([1.0, 2.0, 3.0], 2000, p=[0.6, 0.2, 0.2]), "x": rng.normal(size=2000)}
    )
    result = check_drift(ref, cur, None, DriftSettings(target_column=None), None, html=False)
    assert result.columns == {"stars": "numeric", "x": "numeric"}
    assert result.features["stars"].method == "jensenshannon" and result.features["stars"].drifted
    assert result.features["x"].method == "wasserstein" and not result.features["x"].drifted
    forced = DriftSettings(target_column=None, column_methods={"stars": "wasserstein"})
    assert check_drift(ref, cur, None, forced, None, html=False).features["stars"].method == "wasserstein"
