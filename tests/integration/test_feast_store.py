"""Real Feast: apply → materialize → online lookup (SQLite, Redis + PostgreSQL registry), push, PIT training set."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from freshrec.features import store
from freshrec.features.activity import (
    ITEM_ACTIVITY,
    TAIL_OFFSET,
    USER_ACTIVITY,
    ActivityState,
    activity_as_of,
    activity_defaults,
)
from freshrec.features.training_set import build_training_frame
from freshrec.io import atomic_write_parquet

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def prepared(settings):
    """A small synthetic dataset written by the data engineer's prepare step (event log + profiles)."""
    from freshrec.data.prepare import prepare_dataset
    from freshrec.data.synthetic import generate

    ds = generate(seed=3, n_users=40, n_items=30, n_events=1500, days=40.0)
    prepare_dataset(ds, settings)
    events = ds.events.sort_values(["event_timestamp", "event_id"]).reset_index(drop=True)
    return settings, events


def _tables(settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (
        pd.read_parquet(settings.tables_dir / "users.parquet"),
        pd.read_parquet(settings.tables_dir / "items.parquet"),
    )


def _tail_state(events: pd.DataFrame, entity: str, ids: list[str]) -> pd.DataFrame:
    """What the online store should hold per id: the state just after its last event."""
    last = events.groupby(f"{entity}_id")["event_timestamp"].max()
    as_of = pd.Series([last[i] + TAIL_OFFSET for i in ids])
    return activity_as_of(events, entity, ids, as_of)


def _check_lookup_against_offline(online: store.OnlineFeatures, events: pd.DataFrame, items_table) -> None:
    user = events["user_id"].iloc[-1]
    item_ids = [*list(events["item_id"].drop_duplicates().iloc[:20]), "no-such-item"]
    got = online.lookup(user, item_ids)
    assert len(got) == len(item_ids) and got["item_id"].tolist() == item_ids
    assert got.columns.tolist()[:2] == ["user_id", "item_id"]
    assert set(USER_ACTIVITY + ITEM_ACTIVITY) <= set(got.columns)
    want_items = _tail_state(events, "item", item_ids[:-1])
    np.testing.assert_allclose(got[ITEM_ACTIVITY].iloc[:-1].to_numpy(), want_items[ITEM_ACTIVITY].to_numpy())
    want_user = _tail_state(events, "user", [user])
    np.testing.assert_allclose(
        got[USER_ACTIVITY].to_numpy(), np.repeat(want_user[USER_ACTIVITY].to_numpy(), 21, 0)
    )
    # profiles from the tables; unknown ids get the defaults
    genres = items_table.set_index("item_id")["item_genres"]
    assert got["item_genres"].iloc[:-1].tolist() == [genres[i] for i in item_ids[:-1]]
    unknown = got.iloc[-1]
    assert unknown["item_genres"] == ""
    assert unknown[ITEM_ACTIVITY].to_dict() == pytest.approx(activity_defaults("item"))
    assert got[USER_ACTIVITY + ITEM_ACTIVITY].dtypes.eq(np.float32).all()


def test_local_sqlite_apply_materialize_lookup_push_and_training_set(prepared, monkeypatch):
    settings, events = prepared
    monkeypatch.setattr(store, "JOIN_ROWS_PER_QUERY", 2_000)  # 2-3 entity chunks per query
    report = store.apply(settings)
    assert {"user", "item", "ranking_v1", "user_activity_fv", "item_profile_fv"} <= set(report.objects)
    assert report.activity_rows["events"] == len(events)  # activity tables built from the event log
    # up to the last event exactly: the state right after it (the last user's and item's tail rows) must
    # still be loaded, which _check_lookup_against_offline checks
    first_end = events["event_timestamp"].max().to_pydatetime()
    mat = store.materialize(settings, end=first_end)
    assert set(mat.views.values()) == {"full from 1970"}
    users_table, items_table = _tables(settings)

    online = store.OnlineFeatures(settings)
    assert online._sqlite is not None  # the direct SQLite read path
    _check_lookup_against_offline(online, events, items_table)
    # the direct read returns exactly what Feast's own online_read gives
    via_feast = store.OnlineFeatures(settings)
    via_feast._sqlite = None
    ids = [*events["item_id"].drop_duplicates().iloc[:15], "nope"]
    as_of = events["event_timestamp"].max().to_pydatetime() + timedelta(hours=3)
    for when in (None, as_of):
        pd.testing.assert_frame_equal(
            online.lookup(events["user_id"].iloc[0], ids, as_of=when),
            via_feast.lookup(events["user_id"].iloc[0], ids, as_of=when),
        )

    # at a later request time, hours_since_last is aged like the offline definition
    user = events["user_id"].iloc[-1]
    item = events["item_id"].iloc[-1]
    as_of = events["event_timestamp"].max() + pd.Timedelta(hours=10)
    aged = online.lookup(user, [item], as_of=as_of.to_pydatetime())
    want = activity_as_of(events, "user", [user], as_of)["user_hours_since_last"].iloc[0]
    assert aged["user_hours_since_last"].iloc[0] == pytest.approx(want, rel=1e-5)
    assert want >= 10.0
    want_item = activity_as_of(events, "item", [item], as_of)["item_hours_since_last"].iloc[0]
    assert aged["item_hours_since_last"].iloc[0] == pytest.approx(want_item, rel=1e-5)
    # window counts: 0 once the window no longer reaches the last event (exact, as offline); before
    # that, the stored count, which can only over-count events that left the window since
    item_ids = list(events["item_id"].drop_duplicates().iloc[:25])
    windows = ["item_events_1d", "item_events_7d", "item_events_30d"]
    for later in (pd.Timedelta(hours=10), pd.Timedelta(days=3), pd.Timedelta(days=12), pd.Timedelta(days=45)):
        when = events["event_timestamp"].max() + later
        got = online.lookup(user, item_ids, as_of=when.to_pydatetime())
        want = activity_as_of(events, "item", item_ids, pd.Series([when] * len(item_ids)))
        for days, name in zip((1, 7, 30), windows, strict=True):
            gone = want["item_hours_since_last"].to_numpy() > days * 24
            np.testing.assert_array_equal(got[name].to_numpy()[gone], 0.0)
            assert (got[name].to_numpy() >= want[name].to_numpy()).all()
        gone30 = want["item_hours_since_last"].to_numpy() >= 30 * 24  # capped at 30 days: ">= 30 days"
        np.testing.assert_allclose(
            got["item_ctr_30d"].to_numpy()[gone30], want["item_ctr_30d"].to_numpy()[gone30]
        )
    # 45 days on, every item's 30-day window is empty: online equals offline exactly
    np.testing.assert_allclose(
        got[[*windows, "item_ctr_30d"]].to_numpy(), want[[*windows, "item_ctr_30d"]].to_numpy()
    )
    assert gone30.all()

    # the training set through Feast's point-in-time join equals the pure pandas one
    sample = events.sample(400, random_state=0)
    via_feast = store.get_training_set(settings, sample)
    reference = build_training_frame(events, users_table, items_table)
    reference = reference.set_index("event_id").loc[sample["event_id"]].reset_index()[via_feast.columns]
    pd.testing.assert_frame_equal(via_feast, reference)
    # and the pipelines' engine switch gives the same rows either way (pandas from the tables written here)
    pandas_engine = settings.model_copy(
        update={"features": settings.features.model_copy(update={"training_set_engine": "pandas"})}
    )
    via_pandas = store.training_set(pandas_engine, events).set_index("event_id").loc[sample["event_id"]]
    pd.testing.assert_frame_equal(via_pandas.reset_index()[via_feast.columns], via_feast)

    # push: the online learner's fresh state replaces the materialized row
    user = events["user_id"].iloc[-1]
    state = ActivityState()
    state.update(events)
    later = events["event_timestamp"].max() + timedelta(days=2)
    pushed = state.user_rows([user], later)
    pushed["user_events_total"] = np.float32(12345.0)  # a value nothing else could produce
    assert online.push(user_rows=pushed) == 1
    after = online.lookup(user, ["no-such-item"])
    assert after["user_events_total"].iloc[0] == 12345.0

    # incremental: new events after the first end reach the online store on the next materialize
    from freshrec.data.eventlog import EventLog

    new_item = "brand-new-item"
    t = pd.Timestamp(first_end) + pd.Timedelta(hours=1)  # after the first materialization's end
    fresh = pd.DataFrame(
        {
            "event_id": [f"fresh-{k}" for k in range(3)],
            "event_timestamp": pd.to_datetime([t - pd.Timedelta(seconds=k) for k in range(3)], utc=True),
            "user_id": [user] * 3,
            "item_id": [new_item] * 3,
            "label": np.array([1, 0, 1], dtype=np.int8),
        }
    )
    EventLog(settings.eventlog_dir).append(fresh, source_id="fresh")
    mat2 = store.materialize(settings)
    assert mat2.views["user_activity_fv"].startswith("incremental")
    assert mat2.views["item_activity_fv"].startswith("incremental")
    assert mat2.views["user_profile_fv"] == "full from 1970"  # small, and re-stamped by prepare
    row = store.OnlineFeatures(settings).lookup(user, [new_item]).iloc[0]
    assert row["item_events_total"] == 3.0
    assert row["item_ctr_total"] == pytest.approx((2 + 10 * 0.5) / (3 + 10), rel=1e-6)


def test_sqlite_online_store_never_moves_back_in_event_time(prepared):
    """A materialize of an older snapshot (a pipeline's features step) must not undo a fresher push.

    Feast's own SQLite store overwrites regardless of timestamps; freshrec's local store drops older rows
    per entity, as Feast's Redis store does, so the online learner's pushes survive a concurrent pipeline.
    """
    from freshrec.data.eventlog import EventLog

    settings, events = prepared
    store.apply(settings)
    first_end = events["event_timestamp"].max()
    store.materialize(settings, end=first_end.to_pydatetime())
    online = store.OnlineFeatures(settings)
    via_feast = store.OnlineFeatures(settings)
    via_feast._sqlite = None  # Feast's online_read: the store itself holds the rows, not our reader
    user = events["user_id"].iloc[-1]
    state = ActivityState()
    state.update(events)

    def push(stamp: pd.Timestamp, total: float) -> None:
        rows = state.user_rows([user], stamp)
        rows["user_events_total"] = np.float32(total)
        online.push(user_rows=rows)

    def total() -> float:
        got = online.lookup(user, ["no-such-item"])["user_events_total"].iloc[0]
        assert via_feast.lookup(user, ["no-such-item"])["user_events_total"].iloc[0] == got
        return float(got)

    push(first_end + pd.Timedelta(days=2), 12345.0)  # the learner, ahead of the next materialize
    t = first_end + pd.Timedelta(hours=1)
    fresh = pd.DataFrame(
        {
            "event_id": ["late-1", "late-2"],
            "event_timestamp": pd.to_datetime([t, t], utc=True),
            "user_id": [user, user],
            "item_id": ["late-item", "late-item"],
            "label": np.array([1, 0], dtype=np.int8),
        }
    )
    EventLog(settings.eventlog_dir).append(fresh, source_id="late")
    mat = store.materialize(settings, end=t.to_pydatetime())
    assert mat.views["user_activity_fv"].startswith("incremental")
    assert total() == 12345.0  # the user's materialized row is older than the push: dropped
    # the item had no fresher row: the materialize reached it
    assert online.lookup(user, ["late-item"])["item_events_total"].iloc[0] == 2.0
    push(first_end + pd.Timedelta(days=1), 777.0)  # older than the stored row: ignored
    assert total() == 12345.0
    push(first_end + pd.Timedelta(days=2), 888.0)  # the same stamp: the later write wins
    assert total() == 888.0
    push(first_end + pd.Timedelta(days=3), 4242.0)
    assert total() == 4242.0


def test_point_in_time_join_never_leaks_later_values(settings):
    """A value written after an event must not reach it; a naive latest-value join would leak it."""
    from freshrec.data.prepare import profile_table

    t0 = pd.Timestamp("2024-03-01 12:00", tz="UTC")
    events = pd.DataFrame(
        {
            "event_id": ["a", "b", "c", "d"],
            "event_timestamp": [
                t0,
                t0 + pd.Timedelta(hours=1),
                t0 + pd.Timedelta(hours=1),
                t0 + pd.Timedelta(hours=5),
            ],
            "user_id": ["u", "u", "u", "v"],
            "item_id": ["x", "y", "x", "x"],
            "label": np.array([1, 1, 0, 1], dtype=np.int8),
        }
    )
    users = profile_table(pd.DataFrame({"user_id": ["u", "v"], "user_age": [30, 40]}), events, "user_id")
    items = profile_table(pd.DataFrame({"item_id": ["x", "y"], "item_year": [1999, 2001]}), events, "item_id")
    atomic_write_parquet(users, settings.tables_dir / "users.parquet")
    atomic_write_parquet(items, settings.tables_dir / "items.parquet")
    store.write_activity_tables(settings, events)
    # a value written *after* event "b"/"c" (and before "d"): it must reach neither b nor c
    act_path = settings.tables_dir / "user_activity.parquet"
    act = pd.read_parquet(act_path)
    leak = act[act["user_id"] == "u"].tail(1).copy()
    leak["event_timestamp"] = t0 + pd.Timedelta(hours=2)
    leak["user_events_total"] = np.float32(999.0)
    atomic_write_parquet(pd.concat([act, leak], ignore_index=True), act_path)
    store.apply(settings)

    got = store.get_training_set(settings, events).set_index("event_id")
    # b and c (same user, same timestamp) see only event a: no leak of each other or of the later row
    assert got.loc["b", "user_events_total"] == 1.0 and got.loc["c", "user_events_total"] == 1.0
    assert got.loc["a", "user_events_total"] == 0.0
    assert (got["user_events_total"] != 999.0).all()
    assert got.loc["b", "user_ctr_total"] == pytest.approx((1 + 5) / (1 + 10))
    # item x for event d: a and c are earlier (b is item y)
    assert got.loc["d", "item_events_total"] == 2.0
    # the pure pandas frame agrees
    ref = build_training_frame(events, users, items).set_index("event_id")
    pd.testing.assert_frame_equal(got[USER_ACTIVITY + ITEM_ACTIVITY], ref[USER_ACTIVITY + ITEM_ACTIVITY])

    # a naive join (the latest row per user, ignoring time) leaks the later value into b and c, so the
    # assertions above would fail for it
    latest = pd.read_parquet(act_path).sort_values("event_timestamp").groupby("user_id").tail(1)
    naive = events.merge(latest, on="user_id", suffixes=("", "_row")).set_index("event_id")
    assert naive.loc["b", "user_events_total"] == 999.0 and naive.loc["c", "user_events_total"] == 999.0


def _redis_connection(redis_url: str) -> str:
    """``redis://host:port/db`` → Feast's ``host:port,db=N``."""
    rest = redis_url.split("://", 1)[1]
    hostport, _, db = rest.partition("/")
    return f"{hostport},db={db or 0}"


def test_redis_online_store_and_postgres_registry(prepared, redis_url, postgres_dsn):
    settings, events = prepared
    project = f"freshrec_test_{uuid.uuid4().hex[:8]}"
    redis_settings = settings.model_copy(
        update={
            "features": settings.features.model_copy(
                update={
                    "environment": "redis",
                    "project": project,
                    "redis_connection": _redis_connection(redis_url),
                    "postgres_url": postgres_dsn,
                }
            )
        }
    )
    try:
        store.apply(redis_settings)
        # the registry really is in PostgreSQL: a fresh store object reads the objects back from it
        names = {fv.name for fv in store.feature_store(redis_settings).list_feature_views()}
        assert names == {"user_profile_fv", "item_profile_fv", "user_activity_fv", "item_activity_fv"}
        assert not (settings.workdir / "feast" / "registry.db").exists()
        store.materialize(redis_settings)
        online = store.OnlineFeatures(redis_settings)
        assert online._redis is not None  # one HMGET per entity for all its views
        _check_lookup_against_offline(online, events, _tables(settings)[1])
        via_feast = store.OnlineFeatures(redis_settings)
        via_feast._redis = None  # Feast's own online_read, view by view
        ids = [*events["item_id"].drop_duplicates().iloc[:15], "nope"]
        as_of = events["event_timestamp"].max().to_pydatetime() + timedelta(hours=3)
        for when in (None, as_of):
            pd.testing.assert_frame_equal(
                online.lookup(events["user_id"].iloc[0], ids, as_of=when),
                via_feast.lookup(events["user_id"].iloc[0], ids, as_of=when),
            )
        item = events["item_id"].iloc[0]
        state = ActivityState()
        state.update(events)
        rows = state.item_rows([item], events["event_timestamp"].max() + timedelta(hours=1))
        rows["item_events_7d"] = np.float32(777.0)
        online.push(item_rows=rows)
        assert online.lookup("anyone", [item])["item_events_7d"].iloc[0] == 777.0
    finally:
        # Not fs.teardown(): Feast's SqlRegistry.teardown deletes the rows of *every* project in the database.
        fs = store.feature_store(redis_settings)
        fs._get_provider().online_store.teardown(fs.config, fs.list_feature_views(), fs.list_entities())
        fs.registry.delete_project(project, commit=True)


def test_concurrent_applies_to_the_postgres_registry_all_succeed(prepared, postgres_dsn):
    """The pipeline's features task and the cluster's feast-apply Job both apply to one SQL registry: Feast
    upserts by select-then-insert, so two applies at once collide on the primary key (UniqueViolation);
    ``store.apply`` applies again and every writer ends with the same objects registered."""
    import threading

    settings, _ = prepared
    project = f"freshrec_race_{uuid.uuid4().hex[:8]}"
    sql = settings.model_copy(
        update={
            "features": settings.features.model_copy(
                update={"environment": "redis", "project": project, "postgres_url": postgres_dsn}
            )
        }
    )
    writers, errors, notes = 4, [], []
    barrier = threading.Barrier(writers)

    def one() -> None:
        try:
            barrier.wait()
            store.apply(sql, progress=notes.append)
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=one) for _ in range(writers)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == [], errors
        names = {fv.name for fv in store.feature_store(sql).list_feature_views()}
        assert names == {"user_profile_fv", "item_profile_fv", "user_activity_fv", "item_activity_fv"}
    finally:
        store.feature_store(sql).registry.delete_project(project, commit=True)
    print(f"{sum('concurrent registry write' in n for n in notes)} applies retried after a collision")


def test_local_registry_is_never_seen_half_written(prepared):
    """A process refreshing its registry while a pipeline's ``apply`` rewrites it must read a whole one.

    Feast's file registry truncates and rewrites ``registry.db`` in place; freshrec's local registry store
    renames a finished temporary file over it. Real registry, real threads: one rewrites, one reads.
    """
    import threading

    from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto

    settings, _ = prepared
    store.apply(settings)
    registry = store.feature_store(settings).registry._registry_store
    assert type(registry).__name__ == "AtomicLocalRegistryStore"
    proto = registry.get_registry_proto()
    views = len(proto.feature_views)
    assert views >= 4
    path = registry._filepath
    done = threading.Event()

    def rewrite() -> None:
        for _ in range(150):
            registry.update_registry_proto(proto)
        done.set()

    writer = threading.Thread(target=rewrite)
    writer.start()
    reads, bad = 0, []
    while not done.is_set():
        got = RegistryProto()
        got.ParseFromString(path.read_bytes())
        reads += 1
        if len(got.feature_views) != views:
            bad.append(len(got.feature_views))
    writer.join()
    assert reads > 10 and not bad, f"{len(bad)} of {reads} reads saw a partial registry"
    assert not list(path.parent.glob(f".{path.name}.*.tmp"))  # no temporary files left behind


def test_cached_lookups_see_every_commit_of_any_writer(prepared):
    """The gateway's lookups keep decoded rows while SQLite's ``data_version`` stands still: a push by
    another connection (here a second ``OnlineFeatures``, as the stream job in another process) must show
    on the very next lookup, and cached answers must equal Feast's own ``online_read`` throughout."""
    settings, events = prepared
    store.apply(settings)
    store.materialize(settings)
    reader = store.OnlineFeatures(settings)
    writer = store.OnlineFeatures(settings)
    via_feast = store.OnlineFeatures(settings)
    via_feast._sqlite = None
    user = events["user_id"].iloc[-1]
    items = [*events["item_id"].drop_duplicates().astype(str).iloc[:10], "no-such-item"]
    when = (events["event_timestamp"].max() + pd.Timedelta(hours=5)).to_pydatetime()
    first = reader.lookup(user, items, as_of=when)
    pd.testing.assert_frame_equal(first, via_feast.lookup(user, items, as_of=when))
    assert reader._cache["item"].pos  # the rows are cached now
    # a mix of cached and new ids, and another as_of: aged from the cached stamps exactly as a direct read
    later = (events["event_timestamp"].max() + pd.Timedelta(days=3)).to_pydatetime()
    more = [*items[:5], *events["item_id"].drop_duplicates().astype(str).iloc[10:15]]
    pd.testing.assert_frame_equal(
        reader.lookup(user, more, as_of=later), via_feast.lookup(user, more, as_of=later)
    )

    state = ActivityState()
    state.update(events)
    stamp = events["event_timestamp"].max() + pd.Timedelta(hours=1)
    rows = state.item_rows([items[0]], stamp)
    rows["item_events_total"] = np.float32(98765.0)
    writer.push(item_rows=rows)
    after = reader.lookup(user, items, as_of=when)
    assert after["item_events_total"].iloc[0] == 98765.0
    pd.testing.assert_frame_equal(after, via_feast.lookup(user, items, as_of=when))


def test_a_lookup_whose_rows_another_lookup_evicted_meanwhile_reads_them_directly(prepared):
    """Two gateway threads: A has just cached the rows it read from SQLite; before A gathers them, B's rows
    overflow the cache's bound and empty it. A must answer (reading directly), not fail on ids no longer
    cached (was KeyError → HTTP 500). The interleaving is forced by running B right after A's add."""
    settings, events = prepared
    store.apply(settings)
    store.materialize(settings)
    online = store.OnlineFeatures(settings)
    via_feast = store.OnlineFeatures(settings)
    via_feast._sqlite = None
    cache = online._cache["item"]
    cache.MAX_IDS = 8  # an instance bound: 8 item ids
    user = events["user_id"].iloc[-1]
    all_items = events["item_id"].drop_duplicates().astype(str)
    mine, theirs = list(all_items.iloc[:6]), list(all_items.iloc[6:12])
    add = cache.add
    interleaved = []

    def add_then_b(ids, cols, found, stamps):
        add(ids, cols, found, stamps)
        if not interleaved:  # thread B, between A's add and A's gather (A's lock released)
            interleaved.append(True)
            lock = online._cache_lock
            online._cache_lock = threading.Lock()  # B runs on this thread: a lock of its own
            try:
                online.lookup(user, theirs)
            finally:
                online._cache_lock = lock

    cache.add = add_then_b
    got = online.lookup(user, mine)
    assert interleaved and not set(mine) <= set(cache.pos)  # B's add did empty A's rows
    pd.testing.assert_frame_equal(got, via_feast.lookup(user, mine))
