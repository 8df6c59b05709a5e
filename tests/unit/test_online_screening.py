"""Screening verdicts on synthetic batches with known anomalies, the held store, and the operator CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from freshrec.cli import _register, app
from freshrec.config import ScreeningSettings, load_settings
from freshrec.online.screening import HeldStore, Screener, held_store, screening_dir


def _batch(rng, start: int, n: int = 200, flip: bool = False):
    """A clean batch: labels drawn from a model's scores (so the scores rank the labels, AUC ~0.75)."""
    p = rng.uniform(0.1, 0.9, n)
    y = (rng.uniform(size=n) < p).astype("int8")
    if flip:
        y = 1 - y
    events = pd.DataFrame(
        {
            "event_id": [f"e{start + i}" for i in range(n)],
            "event_timestamp": pd.Timestamp("2026-01-01", tz="UTC")
            + pd.to_timedelta(start + np.arange(n), "s"),
            "user_id": rng.integers(0, 30, n).astype(str),
            "item_id": rng.integers(0, 500, n).astype(str),
            "label": y,
        }
    )
    frame = events.assign(user_events_total=rng.uniform(0, 50, n))
    return events, frame, p.astype(np.float32)


def _warm(screener, rng, batches: int = 10) -> int:
    start = 0
    for _ in range(batches):
        ev, fr, p = _batch(rng, start)
        v = screener.screen(ev, fr, p, ["user_events_total"])
        assert not v.held, v.reasons
        screener.accept(v)
        start += len(ev)
    return start


def test_clean_batches_pass_and_each_anomaly_is_held_by_its_test():
    rng = np.random.default_rng(0)
    s = Screener(ScreeningSettings())
    start = _warm(s, rng, 40)  # 40 clean batches, none held

    ev, fr, p = _batch(rng, start, flip=True)  # a label flip: the serving model ranks the batch upside down
    v = s.screen(ev, fr, p, ["user_events_total"])
    assert v.held and not v.tests["serving_auc"].passed
    s.hold(v)

    ev, fr, p = _batch(rng, start + 1000)  # a bot: one user clicking every item the model scores low
    ev["user_id"], ev["label"], p = "bot", 1, np.full(len(ev), 0.15, dtype=np.float32)
    v = s.screen(ev, fr, p, ["user_events_total"])
    assert v.held and not v.tests["label_rate"].passed and not v.tests["entity_share"].passed
    s.hold(v)

    ev, fr, p = _batch(rng, start + 2000)  # a burst of duplicates: the same events again under new ids
    dup = pd.concat([ev.iloc[:100], ev.iloc[:100].assign(event_id=lambda d: d["event_id"] + "-again")])
    v = s.screen(dup, fr.iloc[:200], p[:200], ["user_events_total"])
    assert v.held and not v.tests["duplicate_share"].passed
    assert v.tests["duplicate_share"].value == 0.5
    s.hold(v)

    ev, fr, p = _batch(rng, start + 3000)  # a feature far outside anything in the reference
    fr["user_events_total"] = 1e6
    v = s.screen(ev, fr, p, ["user_events_total"])
    assert v.held and not v.tests["feature_range"].passed and v.tests["label_rate"].passed

    summary = s.summary()
    assert summary["batches_held"] == 3 and summary["held_now"] == 3
    assert summary["holds_by_test"]["duplicate_share"] == 1 and summary["holds_by_test"]["serving_auc"] >= 1


def test_a_replay_of_the_same_event_ids_is_not_a_duplicate_burst():
    rng = np.random.default_rng(1)
    s = Screener(ScreeningSettings())
    ev, fr, p = _batch(rng, 0)
    s.accept(s.screen(ev, fr, p))
    again = s.screen(ev, fr, p)  # at-least-once delivery after a crash: same ids, same content
    assert again.tests["duplicate_share"].passed and again.stats["duplicate_share"] == 0.0


def test_held_batches_survive_a_restart_and_release_brings_them_back(tmp_path):
    rng = np.random.default_rng(2)
    s = Screener(ScreeningSettings(), tmp_path / "screening")
    start = _warm(s, rng)
    ev, fr, p = _batch(rng, start, flip=True)
    v = s.screen(ev, fr, p)
    assert v.held
    s.hold(v)

    again = Screener(ScreeningSettings(), tmp_path / "screening")  # a restarted learner
    assert len(again.reference) == 10 and again.counters["batches_held"] == 1
    [listed] = again.held.list()
    assert listed["batch_id"] == v.batch_id and listed["events"] == len(ev) and not listed["released"]
    assert any("serving_auc" in r for r in listed["reasons"])
    assert again.released() == []  # nothing to learn until an operator releases it
    again.held.release([v.batch_id])
    [(events, verdict)] = again.released()
    pd.testing.assert_frame_equal(events, ev)
    again.learned_released(events, verdict)
    assert again.held.list() == [] and again.counters["batches_released"] == 1
    assert len(again.reference) == 11  # the released batch is now part of the normal


def test_operator_cli_lists_releases_and_drops_held_batches(tmp_path):
    _register()
    work = tmp_path / "work"
    settings = load_settings(workdir=work)
    rng = np.random.default_rng(3)
    s = Screener(ScreeningSettings(), screening_dir(settings))
    start = _warm(s, rng)
    ids = []
    for k in range(3):
        ev, fr, p = _batch(rng, start + 1000 * k, flip=True)
        v = s.screen(ev, fr, p)
        s.hold(v)
        ids.append(v.batch_id)
    runner = CliRunner()
    res = runner.invoke(app, ["-w", str(work), "online", "held", "-o", "json"])
    assert res.exit_code == 0, res.output
    assert [h["batch_id"] for h in json.loads(res.stdout)["held"]] == ids

    res = runner.invoke(app, ["-w", str(work), "online", "release", ids[0]])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["-w", str(work), "online", "drop", ids[1], "--reason", "bot traffic"])
    assert res.exit_code == 0, res.output
    store = held_store(settings)
    assert [(h["batch_id"], h["released"]) for h in store.list()] == [(ids[0], True), (ids[2], False)]
    dropped = [json.loads(line) for line in (store.root / "dropped.jsonl").read_text().splitlines()]
    assert [(d["batch_id"], d["reason"]) for d in dropped] == [(ids[1], "bot traffic")]

    bad = runner.invoke(app, ["-w", str(work), "online", "drop", "nope", "--reason", "x"])
    assert bad.exit_code == 2 and "no held batch nope" in bad.output
    both = runner.invoke(app, ["-w", str(work), "online", "release"])
    assert both.exit_code == 2 and "--all" in both.output


def test_in_memory_store_release_and_drop():
    store = HeldStore(None)
    s = Screener(ScreeningSettings())
    ev, _fr, _p = _batch(np.random.default_rng(4), 0)
    dup = pd.concat([ev, ev.assign(event_id=lambda d: d["event_id"] + "-b")])
    v = s.screen(dup)
    assert v.held  # the absolute duplicate test applies from the first batch
    store.put(dup, v)
    assert store.drop(None, reason="test") == [v.batch_id] and store.list() == [] and store.dropped() == 1


def test_screening_metrics_textfile(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "metrics" / "freshrec_screening_ctr.prom"
    s = Screener(ScreeningSettings(), tmp_path / "screening", metrics_path=path, model="ctr")
    start = _warm(s, rng)
    ev, fr, p = _batch(rng, start, flip=True)
    s.hold(s.screen(ev, fr, p))
    text = path.read_text()
    assert 'freshrec_screening_held_batches{model="ctr"} 1.0' in text
    assert 'freshrec_screening_batches_screened{model="ctr"} 11.0' in text
    assert 'freshrec_screening_holds_by_test_total{model="ctr",test="serving_auc"} 1.0' in text


def _mild_batch(rng, start: int, n: int = 200, signal: float = 0.55):
    """A batch whose labels follow the scores only weakly (AUC ~0.6): alone, within the serving_auc limit."""
    ev, fr, p = _batch(rng, start, n)
    y = (rng.uniform(size=n) < 0.5 + signal * (p - 0.5)).astype("int8")
    ev["label"] = y
    return ev, fr.assign(label=y), p


def test_label_drift_holds_a_persistent_disagreement_no_single_batch_test_catches():
    rng = np.random.default_rng(6)
    s = Screener(ScreeningSettings())
    start = _warm(s, rng, 30)
    verdicts = []
    for k in range(4):
        ev, fr, p = _mild_batch(rng, start + 1000 * k)
        v = s.screen(ev, fr, p, ["user_events_total"])
        assert v.tests["serving_auc"].passed  # no single batch is out of line on its own
        (s.hold if v.held else s.accept)(v)
        verdicts.append(v)
    held = [v.held for v in verdicts]
    assert held[0] is False and all(held[2:]), [v.tests["label_drift"].value for v in verdicts]
    assert all(not v.tests["label_drift"].passed for v in verdicts if v.held)
    assert any("CUSUM" in r for r in verdicts[-1].reasons)

    small, fr, p = _batch(rng, start + 9000, n=20, flip=True)  # too small for the per-batch tests
    v = s.screen(small, fr, p)
    assert v.held and list(v.tests) == ["duplicate_share", "label_drift"]
    s.hold(v)

    for k in range(6):  # clean batches again: the evidence runs out and they are learned
        ev, fr, p = _batch(rng, start + 20_000 + 1000 * k)
        v = s.screen(ev, fr, p)
        (s.hold if v.held else s.accept)(v)
    assert not v.held and s.drift == 0.0


def test_a_strong_flip_is_held_by_label_drift_at_its_first_batch():
    rng = np.random.default_rng(7)
    s = Screener(ScreeningSettings())
    start = _warm(s, rng, 20)
    ev, fr, p = _batch(rng, start, flip=True)
    v = s.screen(ev, fr, p)
    assert v.held and not v.tests["label_drift"].passed


def _popular_batch(rng, start: int, n: int = 200):
    """Clean events with item popularity: people click popular items far more than the long tail."""
    ev, fr, p = _batch(rng, start, n)
    pop = rng.lognormal(4.0, 1.0, n)
    y = (rng.uniform(size=n) < np.where(pop < 20, 0.15, 0.6)).astype("int8")
    ev["label"] = y
    return ev, fr.assign(item_events_total=pop, label=y), p


def test_a_bot_clicking_the_long_tail_is_held_but_an_enthusiast_is_not():
    rng = np.random.default_rng(8)
    s = Screener(ScreeningSettings())
    start = 0
    for _ in range(20):
        ev, fr, p = _popular_batch(rng, start)
        v = s.screen(ev, fr, p)
        assert not v.held, v.reasons
        s.accept(v)
        start += len(ev)

    # A person clicking nearly everything they rate, on the popular items people rate: not a bot.
    ev, fr, p = _popular_batch(rng, start)
    fan = np.arange(len(ev)) < 100
    ev.loc[fan, "user_id"] = "fan"
    ev.loc[fan, "label"] = 1
    fr["label"] = ev["label"]
    fr.loc[fan, "item_events_total"] = rng.lognormal(5.0, 0.5, int(fan.sum()))
    v = s.screen(ev, fr, p)
    assert v.tests["entity_tail_clicks"].passed, v.tests["entity_tail_clicks"].message
    s.accept(v)

    # A bot: 80 clicks by one new user spread over the catalogue (uniform popularity), among clean events.
    ev, fr, p = _popular_batch(rng, start + 1000)
    bot = np.arange(len(ev)) < 80
    ev.loc[bot, "user_id"] = "bot"
    ev.loc[bot, "label"] = 1
    # the catalogue, not the events: most items are rarely rated
    fr.loc[bot, "item_events_total"] = rng.lognormal(2.5, 1.0, int(bot.sum()))
    v = s.screen(ev, fr, p)
    assert v.held and not v.tests["entity_tail_clicks"].passed
    assert "user bot" in v.tests["entity_tail_clicks"].message
    s.hold(v)
    assert s.summary()["holds_by_test"]["entity_tail_clicks"] == 1


def test_binomial_tail():
    from freshrec.online.screening import binomial_log10_sf

    assert binomial_log10_sf(0, 10, 0.3) == 0.0
    assert abs(binomial_log10_sf(10, 10, 0.5) - 10 * np.log10(0.5)) < 1e-9
    assert abs(10 ** binomial_log10_sf(3, 5, 0.5) - 0.5) < 1e-9


def test_tail_samples_drift_and_log_ranges_survive_a_restart(tmp_path):
    rng = np.random.default_rng(9)
    s = Screener(ScreeningSettings(), tmp_path / "screening", log_features=["item_events_total"])
    start = 0
    for _ in range(6):
        ev, fr, p = _popular_batch(rng, start)
        s.accept(s.screen(ev, fr, p, ["item_events_total"]))
        start += len(ev)
    ev, fr, p = _batch(rng, start, flip=True)  # labels against the scores: drift evidence
    fr = fr.assign(item_events_total=rng.lognormal(4.0, 1.0, len(ev)))
    v = s.screen(ev, fr, p, ["item_events_total"])
    (s.hold if v.held else s.accept)(v)
    assert s.drift > 0
    # The count's range is kept on the log1p scale (counts up to ~1,000 here: raw ranges would reach 100s).
    assert s.ranges[-1]["item_events_total"][1] < 10

    again = Screener(ScreeningSettings(), tmp_path / "screening", log_features=["item_events_total"])
    assert again.drift == s.drift and len(again.tail_samples) == len(s.tail_samples)
    assert list(again.ranges) == list(s.ranges)
    # Ranges kept on another scale are not reused (they are relearned from the next batches).
    raw = Screener(ScreeningSettings(), tmp_path / "screening")
    assert len(raw.ranges) == 0 and len(raw.reference) == len(s.reference)
