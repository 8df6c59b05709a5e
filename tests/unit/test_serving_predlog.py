"""Prediction log (atomic Parquet files), join with clicks, sticky arm assignment."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from freshrec.serving.gateway import ArmStats, arm_for
from freshrec.serving.predlog import PredictionLog, join_clicks, read_predictions

T0 = pd.Timestamp("2026-11-27 12:00:00", tz="UTC")


def test_log_flushes_atomic_files_and_reads_back(tmp_path):
    log = PredictionLog(tmp_path / "pred", flush_rows=1_000_000)
    log.add("r1", "u1", ["a", "b", "c"], 3, "stable", np.array([0.3, 0.2, 0.1], dtype=np.float32))
    log.add("r2", "u2", ["a"], 4, "canary", np.array([[0.9]], dtype=np.float32))
    assert read_predictions(tmp_path / "pred").empty  # buffered, nothing on disk yet
    path = log.flush()
    assert path is not None and path.exists() and log.flush() is None
    assert not list((tmp_path / "pred").glob(".*"))  # no temporary left behind
    frame = read_predictions(tmp_path / "pred")
    assert frame.columns.tolist() == [
        "request_id",
        "user_id",
        "item_id",
        "model_version",
        "arm",
        "score",
        "served_at",
    ]
    assert frame["request_id"].tolist() == ["r1", "r1", "r1", "r2"]
    assert frame["item_id"].tolist() == ["a", "b", "c", "a"]
    assert frame["model_version"].tolist() == [3, 3, 3, 4]
    assert frame["arm"].tolist() == ["stable"] * 3 + ["canary"]
    np.testing.assert_allclose(frame["score"], [0.3, 0.2, 0.1, 0.9], rtol=1e-6)
    assert str(frame["served_at"].dtype) == "datetime64[ns, UTC]"
    assert (pd.Timestamp.now(tz="UTC") - frame["served_at"]).max() < pd.Timedelta(minutes=1)


def test_log_flushes_by_row_count_and_concurrently(tmp_path):
    log = PredictionLog(tmp_path, flush_rows=100)

    def writer(k: int) -> None:
        for i in range(50):
            log.add(f"r{k}-{i}", f"u{k}", ["x", "y"], 1, "stable", np.array([0.5, 0.4]))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.stop()
    frame = read_predictions(tmp_path)
    assert len(frame) == 4 * 50 * 2 and frame["request_id"].nunique() == 200
    assert log.files_written >= 4


def _events(rows):
    return pd.DataFrame(
        [
            {"user_id": u, "item_id": i, "event_timestamp": T0 + pd.Timedelta(seconds=s), "label": lab}
            for u, i, s, lab in rows
        ]
    )


def test_join_clicks_rule():
    preds = pd.DataFrame(
        {
            "request_id": ["r"] * 5,
            "user_id": ["u1", "u1", "u1", "u2", "u3"],
            "item_id": ["a", "b", "c", "a", "a"],
            "served_at": [T0] * 5,
        }
    )
    events = _events(
        [
            ("u1", "a", 30, 0),  # a non-click, then a click in the window: clicked
            ("u1", "a", 60, 1),
            ("u1", "b", 10, 0),  # only a non-click: 0
            ("u1", "c", 500, 1),  # a click after the window: unlabelled
            ("u2", "a", -5, 1),  # a click before the prediction never labels it
            ("u9", "a", 10, 1),  # another user
        ]
    )
    out = join_clicks(preds, events, window_s=300)
    assert out["label"].tolist()[:2] == [1, 0]
    assert out["label"].isna().tolist() == [False, False, True, True, True]
    assert str(out["label"].dtype) == "Int8"
    assert out["event_timestamp"].iloc[0] == T0 + pd.Timedelta(seconds=30)
    assert out["request_id"].tolist() == preds["request_id"].tolist()  # order and columns kept
    # a wider window reaches the late click
    assert join_clicks(preds, events, window_s=600)["label"].iloc[2] == 1


def test_join_clicks_empty_and_missing_columns():
    preds = pd.DataFrame({"user_id": ["u"], "item_id": ["a"], "served_at": [T0]})
    assert (
        join_clicks(
            preds, _events([]).reindex(columns=["user_id", "item_id", "event_timestamp", "label"]), 60
        )["label"]
        .isna()
        .all()
    )
    with pytest.raises(ValueError, match="events lacks column"):
        join_clicks(preds, pd.DataFrame({"user_id": []}), 60)


def test_arm_is_sticky_and_monotone_in_weight():
    users = [f"user-{i}" for i in range(2000)]
    assert {arm_for(u, 0) for u in users} == {"stable"}
    assert {arm_for(u, 100) for u in users} == {"canary"}
    at50 = [arm_for(u, 50) for u in users]
    assert at50 == [arm_for(u, 50) for u in users]  # sticky
    share = at50.count("canary") / len(users)
    assert 0.45 < share < 0.55
    at10 = {u for u in users if arm_for(u, 10) == "canary"}
    assert at10 <= {
        u for u, a in zip(users, at50, strict=True) if a == "canary"
    }  # raising the weight never moves back


def test_arm_stats_percentiles_and_errors():
    stats = ArmStats()
    for ms in range(1, 101):
        stats.record(ms / 1000, np.array([0.2, 0.4]), 7)
    stats.record(0.5, None, None)
    snap = stats.snapshot()
    assert snap["requests"] == 101 and snap["errors"] == 1
    assert snap["error_rate"] == pytest.approx(1 / 101)
    assert 49 <= snap["latency_p50_ms"] <= 52 and snap["latency_p99_ms"] > 99
    assert snap["score_mean"] == pytest.approx(0.3) and snap["model_version"] == 7
    stats.reset()
    assert stats.snapshot()["requests"] == 0
