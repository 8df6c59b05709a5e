"""Abuse probes against the stream and the learner's state, as a broken producer or a crash leaves them (issue 17).

Real parts: the local Redis (a unique stream per test), ``RedisStreamSource``, the ``OnlineLearner`` with a
small Keras model, its checkpoint folder; a TCP proxy in front of Redis stands in for a network outage.
Tests marked ``probe`` (counted by ``benchmarks/bench_abuse.py``) each failed on the code before issue 17
(main at 3ba836d): ``poll`` raised ``UnicodeDecodeError`` on every restart and the entries behind the bad one
stayed pending; a dead consumer's entries stayed pending until the next start; a lost connection raised
from ``poll``; ``newest_event_time`` went backwards; the checkpoint unpickled its activity state.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid

import numpy as np
import pandas as pd
import pytest

from freshrec.config import ModelSettings

pytestmark = [pytest.mark.integration]
probe = pytest.mark.probe


@pytest.fixture
def client(redis_url):
    import redis

    return redis.Redis.from_url(redis_url)


@pytest.fixture
def stream(client):
    name = f"freshrec:test:{uuid.uuid4().hex}"
    yield name
    client.delete(name, f"{name}:dead")


def _tiny_learner(settings, ds, **online):
    from freshrec.features.training_set import build_training_frame
    from freshrec.model.builder import build_model
    from freshrec.model.export import attach
    from freshrec.model.spec import FeatureSpec
    from freshrec.online.learner import Featurizer, OnlineLearner

    frame = build_training_frame(ds.events.iloc[:300], ds.users, ds.items)
    spec = FeatureSpec.for_description(ds.description, id_hash_buckets=128, frame=frame)
    ms = ModelSettings(embedding_dim=4, id_hash_buckets=128, deep_units=[8], cross_layers=1, dropout=0.0)
    model = attach(build_model(spec, ms), spec, ms)
    cfg = settings.online.model_copy(update={"micro_batch": 50, **online})
    return OnlineLearner(
        model,
        None,
        Featurizer(ds.users, ds.items),
        cfg,
        state_dir=settings.state_dir / "online" / "ctr",
        quarantine_dir=settings.quarantine_dir,
    )


def _fields(row: pd.Series) -> dict[str, str]:
    return {
        "event_id": str(row["event_id"]),
        "event_timestamp": pd.Timestamp(row["event_timestamp"]).isoformat(),
        "user_id": str(row["user_id"]),
        "item_id": str(row["item_id"]),
        "label": str(int(row["label"])),
    }


def _dead_entries(client, stream: str) -> dict[str, dict[str, bytes]]:
    """Dead-letter entries by the original entry id."""
    out = {}
    for _, fields in client.xrange(f"{stream}:dead"):
        out[fields[b"_dead_entry_id"].decode()] = fields
    return out


@probe
@pytest.mark.slow
def test_poisoned_stream_every_good_entry_learned_once_every_bad_one_set_aside(settings, client, stream):
    from freshrec.data.synthetic import generate
    from freshrec.data.validation import read_quarantine
    from freshrec.online.sources import RedisStreamSource

    ds = generate(seed=11, n_events=300, n_users=30, n_items=20, days=2.0)
    good = ds.events
    # What a broken producer writes between good entries, and the reason each must carry.
    row = _fields(good.iloc[0])
    poison = [
        ({**row, "event_id": "bad-value", "user_id": b"\xff\xfeu1"}, "entry_not_utf8"),
        ({**row, "event_id": "bad-key", b"\xc3\x28": "x"}, "entry_not_utf8"),
        (
            {k: v for k, v in row.items() if k != "label"} | {"event_id": "no-label"},
            "entry_missing_field:label",
        ),
        ({"event_id": "only-id"}, "entry_missing_field:event_timestamp"),
        ({**row, "event_id": "huge", "item_id": "i" * 200_000}, "entry_too_large"),
        ({"\x00": b"\x80\x81\x82"}, "entry_not_utf8"),
    ]
    # Well-formed strings that are not valid events: the learner's validation quarantines them.
    invalid = [
        {**row, "event_id": "bad-label", "label": "banana"},
        {**row, "event_id": "bad-time", "event_timestamp": "yesterday-ish"},
    ]
    bad_ids: dict[str, str] = {}
    for i, (_, ev) in enumerate(good.iterrows()):
        client.xadd(stream, _fields(ev))
        if i % 45 == 7 and len(bad_ids) < len(poison):
            fields, reason = poison[len(bad_ids)]
            bad_ids[client.xadd(stream, fields).decode()] = reason
        if i in (100, 200):
            client.xadd(stream, invalid[i // 100 - 1])
    assert len(bad_ids) == len(poison)

    learner = _tiny_learner(settings, ds)
    source = RedisStreamSource(client, stream, "learners", "l1")
    totals = learner.run(source, until_idle=True, idle_timeout_s=0.5)

    assert totals.learned == len(good) and totals.duplicates == 0
    assert sorted(learner.seen.to_list()) == sorted([*good["event_id"], "bad-label", "bad-time"])
    assert source.pending_count() == 0
    dead = _dead_entries(client, stream)
    assert {eid: f[b"_dead_reason"].decode() for eid, f in dead.items()} == bad_ids
    # The original bytes are kept, so the entry can be inspected or repaired and replayed.
    undecodable = next(eid for eid, r in bad_ids.items() if r == "entry_not_utf8")
    assert dead[undecodable][b"user_id"] == b"\xff\xfeu1"
    assert all(f[b"_dead_consumer"] == b"l1" and f[b"_dead_deliveries"] == b"1" for f in dead.values())
    assert sum(source.dead_lettered.values()) == len(poison)
    assert totals.quarantined == 2
    assert sorted(read_quarantine(settings.quarantine_dir)["event_id"]) == ["bad-label", "bad-time"]

    # A restart finds nothing left to redeliver: the bad entries are not retried forever.
    again = RedisStreamSource(client, stream, "learners", "l1")
    assert len(again.poll(100, 0.2)) == 0 and again.pending_count() == 0


@probe
def test_an_entry_that_keeps_killing_its_consumer_is_dead_lettered_after_max_deliveries(client, stream):
    from freshrec.online.sources import RedisStreamSource

    eid = client.xadd(
        stream,
        {
            "event_id": "e1",
            "event_timestamp": "2024-01-01T00:00:00Z",
            "user_id": "u",
            "item_id": "i",
            "label": "1",
        },
    ).decode()
    for delivery in range(1, 4):
        # Each "process" reads the entry and dies before acknowledging it (never commits).
        source = RedisStreamSource(client, stream, "g", "c", max_deliveries=3)
        batch = source.poll(10, 0.2)
        assert list(batch.events["event_id"]) == ["e1"], f"delivery {delivery}"
    last = RedisStreamSource(client, stream, "g", "c", max_deliveries=3)
    batch = last.poll(10, 0.2)
    assert len(batch) == 0 and batch.positions == [eid]
    assert last.pending_count() == 0
    dead = _dead_entries(client, stream)[eid]
    assert dead[b"_dead_reason"] == b"entry_delivered_too_often" and dead[b"_dead_deliveries"] == b"4"


@probe
def test_a_crashed_consumers_entries_are_claimed_while_the_new_one_runs(client, stream):
    from freshrec.online.sources import RedisStreamSource

    def add(n: int, prefix: str) -> None:
        for i in range(n):
            client.xadd(
                stream,
                {
                    "event_id": f"{prefix}{i}",
                    "event_timestamp": "2024-01-01T00:00:00Z",
                    "user_id": "u",
                    "item_id": "i",
                    "label": "0",
                },
            )

    add(60, "a")
    dead = RedisStreamSource(client, stream, "g", "dead")
    assert len(dead.poll(40, 0.2)) == 40  # then it crashes: 40 entries pending on "dead"
    del dead
    live = RedisStreamSource(client, stream, "g", "live", claim_min_idle_ms=300, claim_interval_s=0.1)
    got: list[str] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len(got) < 80:
        batch = live.poll(25, 0.05)
        got.extend(batch.events["event_id"])
        live.commit(batch.positions)
        if len(got) == 20:
            add(20, "b")  # the stream keeps flowing while the dead consumer's entries idle
    assert sorted(got) == sorted([f"a{i}" for i in range(60)] + [f"b{i}" for i in range(20)])
    assert live.claimed == 40
    assert live.pending_count() == 0


class _Proxy:
    """A TCP forwarder to Redis that can be cut (every connection closed, the port refused) and restored."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._server: socket.socket | None = None
        self.start()

    def start(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                down, _ = server.accept()
            except OSError:
                return
            up = socket.create_connection(self.target)
            self._conns += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        assert self._server is not None
        # shutdown wakes the thread blocked in accept(); close alone leaves the port listening until then
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        self._conns = []


@probe
def test_a_redis_outage_neither_raises_from_poll_nor_loses_or_duplicates_entries(client, stream, redis_url):
    import redis

    from freshrec.online.sources import RedisStreamSource

    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    proxy = _Proxy((host, int(port)))
    via = redis.Redis(
        host="127.0.0.1", port=proxy.port, socket_timeout=2, socket_connect_timeout=1, retry=None
    )
    for i in range(30):
        client.xadd(
            stream,
            {
                "event_id": f"e{i}",
                "event_timestamp": "2024-01-01T00:00:00Z",
                "user_id": "u",
                "item_id": "i",
                "label": "1",
            },
        )
    source = RedisStreamSource(via, stream, "g", "c")
    first = source.poll(10, 0.2)
    assert len(first) == 10  # handed out, not yet committed when the network goes
    proxy.cut()
    for attempt in range(1, 3):
        t0 = time.monotonic()
        batch = source.poll(10, 0.3)
        assert len(batch) == 0 and batch.positions == []
        assert source.connection_failures == attempt
        assert time.monotonic() - t0 < 3.0
    proxy.start()
    got = list(first.events["event_id"])
    source.commit(first.positions)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(got) < 30:
        batch = source.poll(10, 0.2)
        got.extend(batch.events["event_id"])
        source.commit(batch.positions)
    assert source.connection_failures == 0
    assert sorted(got) == sorted(f"e{i}" for i in range(30))  # each once
    assert source.pending_count() == 0
    proxy.cut()


@probe
@pytest.mark.slow
def test_newest_event_time_is_the_max_after_a_late_redelivery(settings):
    from freshrec.data.synthetic import generate
    from freshrec.online.sources import Batch

    ds = generate(seed=12, n_events=200, n_users=20, n_items=15, days=2.0)
    learner = _tiny_learner(settings, ds)
    late, early = ds.events.iloc[100:], ds.events.iloc[:100]
    learner.step(Batch(late, None, np.zeros(0)))
    newest = learner.totals.newest_event_time
    assert pd.Timestamp(newest) == late["event_timestamp"].max()
    learner.step(Batch(early, None, np.zeros(0)))  # older events arrive after newer ones
    assert learner.totals.newest_event_time == newest
    assert learner.totals.newest_learned_time == newest


@probe
@pytest.mark.slow
def test_checkpoint_activity_state_is_plain_arrays_and_a_planted_pickle_never_runs(settings, tmp_path):
    import pickle

    from freshrec.data.synthetic import generate
    from freshrec.online.sources import Batch

    ds = generate(seed=13, n_events=300, n_users=25, n_items=15, days=3.0)
    learner = _tiny_learner(settings, ds)
    learner.step(Batch(ds.events, None, np.zeros(0)))
    ckpt = learner.checkpoint(None)
    assert (ckpt / "activity.npz").is_file() and not list(ckpt.glob("*.pkl"))
    with np.load(ckpt / "activity.npz", allow_pickle=False) as data:
        assert all(data[k].dtype != object for k in data.files)

    again = _tiny_learner(settings, ds)
    assert again.restore() and again.activity_restored
    as_of = pd.Timestamp(ds.events["event_timestamp"].max()) + pd.Timedelta(hours=1)
    users = ds.events["user_id"].astype(str).unique()
    pd.testing.assert_frame_equal(
        again.featurizer.activity.user_rows(users, as_of), learner.featurizer.activity.user_rows(users, as_of)
    )
    assert again.featurizer.activity.events_seen == learner.featurizer.activity.events_seen

    # Someone who can write the state volume plants a pickle that runs code when loaded.
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("ran",))

    (ckpt / "activity.npz").unlink()
    (ckpt / "activity.pkl").write_bytes(pickle.dumps(Payload()))
    third = _tiny_learner(settings, ds)
    assert third.restore() and not third.activity_restored
    assert not marker.exists()
    # A tampered npz is a clear error, not code: object arrays are refused by allow_pickle=False.
    np.savez(ckpt / "activity.npz", format=np.array([Payload()], dtype=object))
    with pytest.raises(ValueError, match="not an activity state"):
        _tiny_learner(settings, ds).restore()
    assert not marker.exists()


def test_activity_state_round_trips_through_plain_arrays(tmp_path):
    from freshrec.features.activity import ActivityState

    empty = ActivityState()
    empty.save(tmp_path / "empty.npz")
    assert (
        ActivityState.load(tmp_path / "empty.npz")
        .user_rows(["u"], pd.Timestamp("2024-01-01", tz="UTC"))
        .equals(empty.user_rows(["u"], pd.Timestamp("2024-01-01", tz="UTC")))
    )
    ts = pd.date_range("2024-01-01", periods=400, freq="4h", tz="UTC")  # > 60 days: old pairs are dropped
    events = pd.DataFrame(
        {
            "event_timestamp": ts,
            "user_id": [["ü-1", "用户", "u3"][i % 3] for i in range(400)],
            "item_id": [f"i{i % 5}" for i in range(400)],
            "label": [i % 2 for i in range(400)],
        }
    )
    state = ActivityState()
    state.update(events)
    state.save(tmp_path / "a.npz")
    back = ActivityState.load(tmp_path / "a.npz")
    as_of = ts[-1] + pd.Timedelta(hours=2)
    for ids, rows in ((["ü-1", "用户", "u3", "none"], "user_rows"), (["i0", "i4"], "item_rows")):
        pd.testing.assert_frame_equal(getattr(back, rows)(ids, as_of), getattr(state, rows)(ids, as_of))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not an activity state"):
        ActivityState.load(tmp_path / "junk.npz")
