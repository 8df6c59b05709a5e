"""prepare / prepare_dataset on generated data; ingest_frame; concurrent appends."""

from __future__ import annotations

import threading

import pandas as pd
import pytest

from freshrec.data.eventlog import EventLog
from freshrec.data.ingest import ingest_frame
from freshrec.data.prepare import prepare, prepare_dataset
from freshrec.data.synthetic import generate
from freshrec.data.validation import read_quarantine


def test_prepare_dataset_writes_log_and_profile_tables(settings):
    ds = generate(
        n_events=3000, n_users=60, n_items=40, seed=11, drift_at=0.5, new_items=5, new_item_share=0.3
    )
    report = prepare_dataset(ds, settings)
    ing = report.ingest
    assert (ing.received, ing.accepted, ing.quarantined) == (3000, 3000, 0)
    assert EventLog(settings.eventlog_dir).count() == 3000
    users = pd.read_parquet(settings.tables_dir / "users.parquet")
    items = pd.read_parquet(settings.tables_dir / "items.parquet")
    assert (report.users, report.items) == (len(users), len(items)) == (60, 45)
    start = ds.events["event_timestamp"].min()
    assert (users["event_timestamp"] == start).all() and (items["event_timestamp"] == start).all()
    # `created` is each item's first event; the new items appear only after the drift time
    created = items.set_index("item_id")["created"]
    first = ds.events.groupby("item_id")["event_timestamp"].min()
    assert (created.loc[first.index] == first).all()
    assert (created.loc[list(ds.truth["new_item_ids"])] >= ds.truth["drift_at"]).all()
    assert list(users.columns) == ["user_id", *ds.description.user_features, "event_timestamp", "created"]

    again = prepare_dataset(ds, settings)
    assert again.ingest.already_ingested and again.ingest.skipped == 3000
    assert EventLog(settings.eventlog_dir).count() == 3000


def test_prepare_by_name_generates_synthetic(settings):
    report = prepare(settings, "synthetic")
    assert report.dataset == "synthetic" and report.ingest.accepted == 100_000
    assert report.first_event < report.last_event


def test_ingest_frame_quarantines_and_hashes_content_by_default(settings):
    ev = generate(n_events=200, seed=2).events.astype({"label": "int64"})
    ev.loc[5, "label"] = 3
    ev.loc[6, "user_id"] = ""
    first = ingest_frame(ev, settings, source="replay-1")
    assert (first.accepted, first.quarantined, first.reasons) == (
        198,
        2,
        {"label_not_binary": 1, "user_id_empty": 1},
    )
    assert first.source_id.startswith("content:")
    assert ingest_frame(ev, settings, source="replay-1").already_ingested
    q = read_quarantine(settings.quarantine_dir)
    assert len(q) == 2 and set(q["source"]) == {"replay-1"}


def test_concurrent_appends_do_not_duplicate(tmp_path):
    ev = generate(n_events=4000, seed=8).events
    log = EventLog(tmp_path / "log")
    chunks = [ev.iloc[0:3000], ev.iloc[1000:4000], ev.iloc[500:2500]]
    errors: list[BaseException] = []

    def run(chunk: pd.DataFrame, i: int) -> None:
        try:
            log.append(chunk, source_id=f"writer-{i}")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c, i)) for i, c in enumerate(chunks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    back = log.read()
    assert len(back) == 4000 and back["event_id"].is_unique


def test_prepare_quarantines_rows_the_loader_rejects(settings, tmp_path):
    folder = tmp_path / "mini"
    folder.mkdir()
    (folder / "r.csv").write_text(
        "u,i,t,rating\n1,a,1700000000,5\n1,b,1700000100,2\n,a,1700000200,4\n2,a,soon,4\n"
    )
    (folder / "u.csv").write_text("u,g\n1,F\n2,M\n")
    (folder / "i.csv").write_text("i,tags\na,x|y\nb,\n")
    (tmp_path / "mini.yaml").write_text(
        """
name: mini
events: {file: r.csv, format: {header: true}, user_key: u, item_key: i, timestamp: {column: t}, label: rating >= 4,
         event_id: "{u}-{i}-{t}"}
users: {file: u.csv, format: {header: true}, key: u, features: {user_g: {type: categorical, from: g}}}
items: {file: i.csv, format: {header: true}, key: i, features: {item_tags: {type: multi_categorical, from: tags, split: "|"}}}
"""
    )
    # half the rows are bad: allowed here, to see where they go (the default share refuses it)
    data = settings.data.model_copy(update={"datasets_dir": tmp_path, "max_quarantine_share": 0.5})
    settings = settings.model_copy(update={"data": data})
    report = prepare(settings, tmp_path / "mini.yaml")
    ing = report.ingest
    assert (ing.received, ing.accepted, ing.quarantined) == (4, 2, 2)
    assert ing.reasons == {"user_id_empty": 1, "timestamp_unparseable": 1}
    q = read_quarantine(settings.quarantine_dir)
    assert sorted(q["reasons"]) == ["timestamp_unparseable", "user_id_empty"] and set(q["source"]) == {
        "dataset:mini"
    }
    items = pd.read_parquet(settings.tables_dir / "items.parquet")
    assert items["item_tags"].tolist() == ["x|y", ""]
    again = prepare(settings, tmp_path / "mini.yaml").ingest
    assert again.already_ingested and (again.received, again.skipped) == (4, 4)


CLICKS_YAML = """
name: clicks
events:
  file: clicks.csv
  format: {header: true}
  user_key: u
  item_key: i
  timestamp: {column: ts, unit: null, format: "%Y-%m-%d %H:%M:%S"}
  label: y == 1
  event_id: "{u}-{i}-{ts}"
"""


def _clicks(tmp_path, rows: list[str]):
    (tmp_path / "clicks.csv").write_text("u,i,ts,y\n" + "\n".join(rows) + "\n")
    (tmp_path / "clicks.yaml").write_text(CLICKS_YAML)
    return tmp_path / "clicks.yaml"


def test_a_prepare_that_quarantines_every_row_fails_naming_the_reason(settings, tmp_path):
    """The issue's case: timestamps not in the described format. prepare used to exit 0 with 100%
    quarantined (then train failed on an empty frame); now it fails and writes no event."""
    from freshrec.data.prepare import QuarantineError

    path = _clicks(tmp_path, [f"{k},a,2024-01-0{k}T10:00:00Z,1" for k in range(1, 6)])
    settings = settings.model_copy(
        update={"data": settings.data.model_copy(update={"datasets_dir": tmp_path})}
    )
    with pytest.raises(
        QuarantineError, match=r"5 of 5 rows \(100.0%\) would be quarantined, every row"
    ) as err:
        prepare(settings, path)
    message = str(err.value)
    assert "Main reason: timestamp_unparseable (5 rows)" in message
    assert "'ts': '2024-01-01T10:00:00Z'" in message and "'source_row': '0'" in message
    assert err.value.example["u"] == "1"
    assert EventLog(settings.eventlog_dir).count() == 0
    assert len(read_quarantine(settings.quarantine_dir)) == 5  # kept for inspection

    from typer.testing import CliRunner

    from freshrec.cli import _register, app

    _register()
    result = CliRunner().invoke(
        app,
        [
            "--workdir",
            str(settings.workdir),
            "data",
            "prepare",
            "-d",
            str(path),
            "--datasets-dir",
            str(tmp_path),
        ],
        env={"COLUMNS": "300"},
    )
    assert result.exit_code == 1 and "timestamp_unparseable" in result.output


def test_more_than_the_allowed_share_quarantined_fails_and_less_passes(settings, tmp_path):
    from freshrec.data.prepare import QuarantineError

    good = [f"{k},a,2024-01-01 10:00:0{k},1" for k in range(7)]
    path = _clicks(tmp_path, [*good, "8,,2024-01-01 11:00:00,1", "9,b,2024-01-01 12:00:00,", "9,c,soon,0"])
    data = settings.data.model_copy(update={"datasets_dir": tmp_path})
    strict = settings.model_copy(update={"data": data})
    with pytest.raises(QuarantineError, match=r"3 of 10 rows \(30.0%\).*max_quarantine_share=0.1"):
        prepare(strict, path)
    assert EventLog(strict.eventlog_dir).count() == 0
    lenient = settings.model_copy(update={"data": data.model_copy(update={"max_quarantine_share": 0.3})})
    report = prepare(lenient, path)
    assert (report.ingest.accepted, report.ingest.quarantined) == (7, 3)
    assert EventLog(lenient.eventlog_dir).count() == 7
