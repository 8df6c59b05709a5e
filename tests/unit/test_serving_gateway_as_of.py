"""The gateway's ``as_of`` field: replays log their impressions at event time, bad values are 400s."""

from __future__ import annotations

import pandas as pd
import pytest

from freshrec.serving.gateway import GatewayError, parse_as_of


def test_as_of_parses_iso_times_as_utc_nanoseconds():
    assert parse_as_of(None) is None
    assert parse_as_of("1998-03-01T12:00:00Z") == pd.Timestamp("1998-03-01T12:00:00Z").value
    # a naive time is taken as UTC, like every timestamp in freshrec
    assert parse_as_of("1998-03-01 12:00:00") == pd.Timestamp("1998-03-01T12:00:00Z").value


@pytest.mark.parametrize("bad", ["yesterday", 12345, ["1998-03-01"]])
def test_as_of_rejects_what_is_not_an_iso_time(bad):
    with pytest.raises(GatewayError) as err:
        parse_as_of(bad)
    assert err.value.status == 400
    assert "as_of" in str(err.value)


def test_prediction_log_keeps_the_replayed_time_and_joins_with_historical_clicks(tmp_path):
    import numpy as np

    from freshrec.serving.predlog import PredictionLog, join_clicks, read_predictions

    log = PredictionLog(tmp_path)
    as_of = parse_as_of("1998-03-01T12:00:00Z")
    log.add("r1", "u1", ["i1", "i2"], 3, "stable", np.array([0.9, 0.2]), as_of)
    log.flush()
    preds = read_predictions(tmp_path)
    assert (pd.to_datetime(preds["served_at"], utc=True) == pd.Timestamp("1998-03-01T12:00:00Z")).all()
    events = pd.DataFrame(
        {
            "user_id": ["u1", "u1"],
            "item_id": ["i1", "i2"],
            "event_timestamp": pd.to_datetime(["1998-03-01T12:00:05Z", "1998-03-01T11:00:00Z"], utc=True),
            "label": [1, 1],
        }
    )
    joined = join_clicks(preds, events, window_s=3600).set_index("item_id")
    assert joined.loc["i1", "label"] == 1
    assert pd.isna(joined.loc["i2", "label"])  # the click came before the impression: never counted
