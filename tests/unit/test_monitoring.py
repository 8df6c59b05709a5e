"""The monitor's parts: calibrated drift, schema checks, expected logloss, CBPE, served quality, signals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from freshrec.config import DriftSettings, Settings
from freshrec.data.synthetic import generate
from freshrec.features.training_set import build_training_frame
from freshrec.monitoring.catalogue import ALERTS, Signal, inhibited
from freshrec.monitoring.drift import check_drift, resolve_columns
from freshrec.monitoring.drift.calibration import calibrate
from freshrec.monitoring.drift.check import build_reference_profile, expected_logloss
from freshrec.monitoring.estimate import PerformanceEstimator, expected_auc, realised
from freshrec.monitoring.monitor import Monitor, PipelineEvent, ServingState, monitor_for_stream
from freshrec.monitoring.served import ServedQualityMonitor

COLUMNS = ["user_gender", "user_age", "user_occupation", "item_year", "user_events_total", "user_events_7d"]


@pytest.fixture(scope="module")
def stream() -> tuple[pd.DataFrame, dict]:
    """A synthetic stream with features over its whole history; a segment shift in its last quarter."""
    ds = generate(
        seed=11,
        n_events=24_000,
        n_users=1500,
        n_items=400,
        drift_at=0.75,
        segment_weights_after=[0.85, 0.05, 0.05, 0.05],
    )
    frame = build_training_frame(ds.events.sort_values("event_timestamp", kind="stable"), ds.users, ds.items)
    return frame.reset_index(drop=True), ds.truth


def _split(frame: pd.DataFrame, truth: dict):
    before = frame[frame.event_timestamp < truth["drift_at"]].reset_index(drop=True)
    after = frame[frame.event_timestamp >= truth["drift_at"]].reset_index(drop=True)
    return before, after


def test_calibrated_thresholds_keep_quiet_on_growth_and_find_the_shift(stream):
    frame, truth = stream
    before, after = _split(frame, truth)
    settings = DriftSettings()
    kinds = resolve_columns(COLUMNS, frame)
    origin = frame.event_timestamp.min()
    reference, history = before.iloc[-6000:-3000], before.iloc[:-6000]
    prof = build_reference_profile(reference, kinds, settings, growth_origin=origin, target_column="")
    cal = calibrate(prof, history, kinds, settings, window_rows=1500, max_windows=10, false_alarm_rate=0.01)
    assert cal.windows == 8 and set(cal.features) == set(kinds)
    assert cal.dataset_threshold >= max(cal.dataset_null_scores)

    # Later windows of the same process (no shift yet) stay under the calibrated thresholds, while the
    # fixed ones flag the counters that grow with the stream's age.
    quiet = before.iloc[-1500:]
    fixed = check_drift(reference, quiet, kinds, settings, None, html=False, target_column="")
    assert "user_events_total" in fixed.drifted_features  # growth flagged by a fixed threshold
    ok = check_drift(
        prof,
        quiet,
        kinds,
        settings,
        None,
        html=False,
        calibration=cal,
        growth_origin=origin,
        target_column="",
    )
    assert not ok.dataset_drift and ok.verdict == "ok"
    shifted = check_drift(
        prof,
        after.iloc[:1500],
        kinds,
        settings,
        None,
        html=False,
        calibration=cal,
        growth_origin=origin,
        target_column="",
    )
    assert shifted.dataset_drift and shifted.verdict == "drift"
    assert {"user_age", "user_gender"} & set(shifted.drifted_features)
    assert shifted.calibration.dataset_score > shifted.calibration.dataset_threshold
    assert "calibrated on 8 earlier windows" in shifted.reason


def test_calibration_needs_enough_history(stream):
    frame, _ = stream
    kinds = resolve_columns(COLUMNS, frame)
    prof = build_reference_profile(frame.iloc[-2000:], kinds, DriftSettings(), target_column="")
    with pytest.raises(ValueError, match="at least 4 needed"):
        calibrate(prof, frame.iloc[:3000], kinds, window_rows=1000)


def _frame(rng: np.random.Generator, n: int = 1000) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [f"u{i % 300}" for i in range(n)],
            "user_age": rng.normal(35, 8, n),
            "user_gender": rng.choice(["F", "M"], n),
            "user_occupation": rng.choice(["a", "b", "c"], n),
            "item_year": rng.integers(1950, 2000, n).astype(np.int64),
        }
    )


def test_type_change_constant_and_broken_join_are_quality_failures():
    rng = np.random.default_rng(0)
    ref, cur = _frame(rng), _frame(rng)
    cur["item_year"] = cur["item_year"].astype(str) + "-01-01"  # an upstream job now writes dates
    cur["user_age"] = 30.0
    cur.loc[: int(0.8 * len(cur)), ["user_gender", "user_occupation"]] = (
        None  # the profile join stopped matching
    )
    result = check_drift(ref, cur, None, DriftSettings(), None, html=False)
    checks = {(f.check, f.column) for f in result.quality_failures}
    assert ("type_change", "item_year") in checks
    assert ("constant", "user_age") in checks
    assert ("entity_join", "user") in checks
    assert result.verdict == "quality_failure"
    msg = next(f.message for f in result.quality_failures if f.check == "type_change")
    assert "numeric to string" in msg and "1" in msg


def test_prediction_drift_counts_by_its_effect_on_the_expected_logloss():
    rng = np.random.default_rng(1)
    ref = pd.DataFrame({"x": rng.normal(0, 1, 3000), "score": rng.beta(2, 5, 3000)})
    mirrored = pd.DataFrame({"x": rng.normal(0, 1, 3000), "score": 1 - rng.beta(2, 5, 3000)})
    confident = pd.DataFrame({"x": rng.normal(0, 1, 3000), "score": rng.beta(0.3, 0.6, 3000)})
    s = DriftSettings(target_column=None)
    moved = check_drift(ref, mirrored, ["x"], s, None, html=False)
    # The score distribution moved a lot (Wasserstein) but the logloss it expects did not: no drift.
    assert moved.prediction_drift.drifted and not moved.expected_logloss.drifted
    assert abs(moved.expected_logloss.shift) < 0.01 and moved.verdict == "ok"
    sharp = check_drift(ref, confident, ["x"], s, None, html=False)
    assert sharp.expected_logloss.drifted and sharp.expected_logloss.shift < -0.1 and sharp.verdict == "drift"
    assert expected_logloss(np.array([0.5])) == pytest.approx(np.log(2))


def test_cbpe_estimates_calibrated_scores_and_misses_flipped_labels():
    rng = np.random.default_rng(2)
    p = rng.beta(2, 2, 40_000)
    y = (rng.random(len(p)) < p).astype(float)
    est = PerformanceEstimator(min_rows=500)
    est.observe(p[:20_000], y[:20_000])
    e = est.estimate(p[20_000:])
    loss, auc, ctr = realised(p[20_000:], y[20_000:])
    assert abs(e.logloss - loss) < 0.01 and abs(e.auc - auc) < 0.01 and abs(e.ctr - ctr) < 0.01
    assert e.calibration_error < 0.02
    # Flipped labels change the realised figures, not the estimate (the scores did not move).
    loss_flipped, auc_flipped, _ = realised(p[20_000:], 1 - y[20_000:])
    assert loss_flipped - e.logloss > 0.3 and auc_flipped < 0.4
    assert PerformanceEstimator(min_rows=500).estimate(p) is None  # no labels yet: no estimate
    assert expected_auc(np.array([0.9, 0.1]), np.array([1.0, 0.0])) == pytest.approx(1.0)


def test_served_quality_pages_on_flips_and_collapses_not_on_noise():
    rng = np.random.default_rng(3)

    def window(n: int = 2000):
        p = rng.beta(3, 3, n)
        return p, (rng.random(n) < p).astype(float)

    mon = ServedQualityMonitor(baseline_windows=3, min_labels=200, alpha=0.001)
    for _ in range(3):
        mon.seed(*window())
    noisy = [mon.check(*window()) for _ in range(20)]
    assert not any(q.logloss_dropped or q.ctr_collapsed or q.ranking_inverted for q in noisy)
    p, y = window()
    flipped = mon.check(p, 1 - y)
    assert flipped.logloss_dropped and flipped.ranking_inverted and not flipped.ctr_collapsed
    p, y = window()
    collapsed = mon.check(p, y * (rng.random(len(y)) < 0.1))
    assert collapsed.ctr_collapsed and collapsed.ctr_ratio < 0.2
    few = ServedQualityMonitor(min_labels=200)
    few.seed(*window(100))
    assert not few.check(*window(100)).enough_labels


def test_monitor_names_what_stopped(stream):
    frame, truth = stream
    before, _ = _split(frame, truth)
    rng = np.random.default_rng(4)
    before = before.assign(score=rng.beta(3, 3, len(before)))
    settings = Settings()
    kinds = resolve_columns(COLUMNS, frame)
    ref, win = before.iloc[:4000], before.iloc[4000:5500].copy()
    mon = Monitor(
        settings, ref, kinds, seed_scores=ref["score"].to_numpy(), seed_labels=ref["label"].to_numpy()
    )
    head = win.event_timestamp.max()
    report = mon.observe(
        0,
        win,
        now=1000.0,
        progress={"stream_features": head, "online_learner": head - pd.Timedelta(days=2)},
        serving=ServingState(published_version=5, published_at=900.0, served_versions=[4]),
        guard_failures_in_a_row=3,
        events=[PipelineEvent(kind="canary_aborted", detail="canary v6 aborted: error rate 4%", version=6)],
    )
    names = {s.name: s for s in report.signals}
    assert names["FreshrecOnlineLearnerStalled"].cause == "online_learner"
    assert "2.0 days behind" in names["FreshrecOnlineLearnerStalled"].summary
    assert "FreshrecStreamFeaturesStale" not in names
    assert names["FreshrecServingStaleVersion"].cause == "serving:v4->v5"
    assert names["FreshrecCanaryAborted"].labels == {"version": "6"}
    # A stalled learner's guard has nothing new to judge: its failing guard is inhibited.
    assert report.inhibited == {"FreshrecOnlineGuardFailing": "FreshrecOnlineLearnerStalled"}
    assert {s.name for s in report.pages} == {
        "FreshrecOnlineLearnerStalled",
        "FreshrecServingStaleVersion",
        "FreshrecCanaryAborted",
    }
    # Within the grace period after a publish the old version is still fine.
    quiet = mon.observe(
        1, win, now=905.0, serving=ServingState(published_version=5, published_at=900.0, served_versions=[4])
    )
    assert "FreshrecServingStaleVersion" not in {s.name for s in quiet.signals}


def test_drift_retrains_but_broken_data_does_not(stream):
    frame, truth = stream
    before, after = _split(frame, truth)
    settings = Settings()
    kinds = resolve_columns(COLUMNS, frame)
    mon = Monitor(settings, before.iloc[-3000:], kinds)
    drifted = mon.observe(0, after.iloc[:1500])
    assert "FreshrecDataDrift" in {s.name for s in drifted.notices} and drifted.pages == []
    assert drifted.retrain_reason and drifted.retrain_reason.startswith("monitor: data drift")
    broken = after.iloc[1500:3000].copy()
    broken["user_age"] = np.nan
    report = mon.observe(1, broken)
    assert report.retrain_reason is None
    assert [s.name for s in report.pages] == ["FreshrecFeatureMissing"] and report.pages[
        0
    ].cause == "user_age"


def test_catalogue_severities_and_inhibitions_are_consistent():
    assert {a.severity for a in ALERTS.values()} == {"critical", "warning", "info"}
    assert all(a.severity == "info" for a in ALERTS.values() if a.area == "drift")  # drift never pages
    pages = [Signal.of("FreshrecCTRCollapse", "x"), Signal.of("FreshrecServedQualityDrop", "y")]
    assert inhibited(pages) == {"FreshrecServedQualityDrop": "FreshrecCTRCollapse"}
    with pytest.raises(KeyError, match="unknown alert"):
        Signal.of("FreshrecNoSuchThing", "z")


def test_movielens_replay_is_noticed_not_paged(datasets_dir):
    """The real stream: MovieLens-100k's last 20 % in windows of 2000 against its training window.

    The fixed drift share (>= 0.5) fires on every window (counters that grow, cold-start users); the
    calibrated monitor finds the weeks where new users' ages and the years of what they rate move together,
    as notices, and pages on none.
    """
    from freshrec.data.datasets import load_dataset

    ds = load_dataset("movielens-100k", datasets_dir)
    events = ds.events.sort_values(["event_timestamp", "event_id"], kind="stable").reset_index(drop=True)
    frame = build_training_frame(events, ds.users, ds.items)
    cut = int(len(frame) * 0.8)
    history, replay = frame.iloc[:cut], frame.iloc[cut:]
    columns = resolve_columns(
        [c for c in frame.columns if c.startswith(("user_", "item_")) and not c.endswith("_id")], frame
    )
    mon = monitor_for_stream(
        Settings(),
        history,
        columns,
        reference_rows=5000,
        window_rows=2000,
        growth_origin=events.event_timestamp.min(),
    )
    assert mon.calibration is not None and mon.calibration.windows == 20
    fixed, notices, pages = 0, 0, 0
    for w in range(len(replay) // 2000):
        window = replay.iloc[w * 2000 : (w + 1) * 2000]
        fixed += check_drift(
            history.iloc[-5000:], window, columns, DriftSettings(), None, html=False
        ).dataset_drift
        report = mon.observe(w, window)
        notices += any(s.name == "FreshrecDataDrift" for s in report.notices)
        pages += len(report.pages)
    assert fixed == 10
    assert pages == 0 and 1 <= notices <= 5
