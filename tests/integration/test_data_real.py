"""The real MovieLens data through the loaders, and ``freshrec data prepare|ingest`` through the real CLI."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from freshrec.data.datasets import load_dataset, split_events
from freshrec.data.eventlog import EventLog


@pytest.fixture(scope="module")
def ml100k(datasets_dir):
    return load_dataset("movielens-100k", datasets_dir)


def test_movielens_100k_documented_counts(ml100k):
    ev = ml100k.events
    assert len(ev) == 100_000 and ev["event_id"].is_unique
    assert ev["user_id"].nunique() == 943 and ev["item_id"].nunique() == 1682
    assert len(ml100k.users) == 943 and len(ml100k.items) == 1682
    assert ev["rating"].value_counts().sort_index().tolist() == [6110, 11370, 27145, 34174, 21201]
    assert ev["label"].mean() == pytest.approx((34174 + 21201) / 100_000)  # 0.55375
    assert ev["event_timestamp"].min() == pd.Timestamp(874724710, unit="s", tz="UTC")
    assert ev["event_timestamp"].max() == pd.Timestamp(893286638, unit="s", tz="UTC")
    assert ev["event_timestamp"].is_monotonic_increasing


def test_movielens_100k_profiles(ml100k):
    users = ml100k.users.set_index("user_id")
    assert users.loc["1"].to_dict() == {
        "user_gender": "M",
        "user_age": 24,
        "user_occupation": "technician",
        "user_zip_prefix": "857",
    }
    items = ml100k.items.set_index("item_id")
    assert items.loc["1"].to_dict() == {"item_genres": "Animation|Children's|Comedy", "item_year": 1995}
    assert items.loc["267", "item_genres"] == "" and items.loc["267", "item_year"] == 0  # the "unknown" movie
    assert set(ml100k.users["user_gender"]) == {"M", "F"}
    assert ml100k.users["user_zip_prefix"].str.len().eq(3).all()
    assert (ml100k.items["item_year"].between(1920, 1998) | ml100k.items["item_year"].eq(0)).all()


def test_autoint_protocol(datasets_dir):
    ds = load_dataset("movielens-100k-autoint", datasets_dir)
    ev = ds.events
    assert len(ev) == 100_000 - 27145 and not (ev["rating"] == 3).any()
    assert ev["label"].tolist() == (ev["rating"] > 3).astype(int).tolist()
    train, valid, test = split_events(ev, ds.description)
    assert (len(train), len(valid), len(test)) == (58284, 7286, 7285)
    assert test["event_timestamp"].min() < train["event_timestamp"].max()  # random, not by time


@pytest.mark.slow
def test_official_grouplens_folder_name_is_accepted(tmp_path, datasets_dir):
    official = tmp_path / "ml-100k"
    official.mkdir()
    for f in (datasets_dir / "movielens-100k").iterdir():
        (official / f.name).symlink_to(f)
    ds = load_dataset("movielens-100k", tmp_path)
    assert len(ds.events) == 100_000
    # datasets_dir may also be the dataset folder itself
    assert len(load_dataset("movielens-100k", official).users) == 943


@pytest.mark.slow
def test_movielens_1m_tail_documented_counts(datasets_dir):
    ds = load_dataset("movielens-1m-tail", datasets_dir)
    ev = ds.events
    assert len(ev) == 200_042 and ev["event_id"].is_unique
    assert ev["user_id"].nunique() == 1783 and ev["item_id"].nunique() == 3511
    assert ev["event_timestamp"].min() == pd.Timestamp(975768738, unit="s", tz="UTC")
    assert ev["event_timestamp"].max() == pd.Timestamp(1046454590, unit="s", tz="UTC")
    # profiles cover every user and movie of MovieLens-1M, so each event finds its profile
    assert len(ds.users) == 6040 and len(ds.items) == 3883
    assert set(ev["user_id"]) <= set(ds.users["user_id"]) and set(ev["item_id"]) <= set(ds.items["item_id"])
    users = ds.users.set_index("user_id")
    assert users.loc["1", "user_occupation"] == "K-12 student" and users.loc["1", "user_age"] == 1
    items = ds.items.set_index("item_id")
    assert items.loc["1"].to_dict() == {"item_genres": "Animation|Children's|Comedy", "item_year": 1995}
    assert (ds.items["item_year"] > 1900).all()


@pytest.mark.slow
def test_1m_tail_cut_from_an_official_full_ratings_file(tmp_path, datasets_dir):
    """With GroupLens' ml-1m/ratings.dat the description keeps the same last 200,042 ratings."""
    src = datasets_dir / "movielens-1m-tail"
    official = tmp_path / "ml-1m"
    official.mkdir()
    for name in ("users.dat", "movies.dat"):
        (official / name).symlink_to(src / name)
    earlier = "".join(f"{u}::{m}::3::{970000000 + u * 10 + m}\n" for u in range(1, 40) for m in range(1, 30))
    (official / "ratings.dat").write_bytes(earlier.encode() + (src / "ratings_tail.dat").read_bytes())
    ds = load_dataset("movielens-1m-tail", tmp_path)
    assert len(ds.events) == 200_042
    assert ds.events["event_timestamp"].min() == pd.Timestamp(975768738, unit="s", tz="UTC")


def _cli():
    from freshrec import cli

    if not any(group.name == "data" for group in cli.app.registered_groups):
        cli._register()
    return cli.app


@pytest.mark.slow
def test_cli_data_prepare_movielens_100k(tmp_path, datasets_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FRESHREC_CONFIG", raising=False)
    workdir = tmp_path / "work"
    runner = CliRunner()
    args = ["--workdir", str(workdir), "data", "prepare", "--dataset", "movielens-100k"]
    args += ["--datasets-dir", str(datasets_dir)]
    result = runner.invoke(_cli(), args)
    assert result.exit_code == 0, result.output
    assert "100,000" in result.output and "prepare movielens-100k" in result.output
    log = EventLog(workdir / "eventlog")
    assert log.count() == 100_000 and len(log.dates()) > 200
    users = pd.read_parquet(workdir / "tables" / "users.parquet")
    items = pd.read_parquet(workdir / "tables" / "items.parquet")
    assert len(users) == 943 and len(items) == 1682
    assert {"event_timestamp", "created", "user_gender", "user_zip_prefix"} <= set(users.columns)
    assert str(items["event_timestamp"].dtype) == "datetime64[ns, UTC]"
    assert items["event_timestamp"].max() <= log.read(columns=["event_timestamp"])["event_timestamp"].min()

    again = runner.invoke(_cli(), args)
    assert again.exit_code == 0 and "already ingested" in again.output
    assert log.count() == 100_000


def test_cli_data_ingest_reports_rows_and_bad_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = tmp_path / "good.jsonl"
    rows = [
        {
            "event_id": f"e{i}",
            "event_timestamp": 1_700_000_000 + i,
            "user_id": "u",
            "item_id": "i",
            "label": i % 3,
        }
        for i in range(9)
    ]
    good.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bad = tmp_path / "broken.csv"
    bad.write_text("event_id,when\n1,2\n")
    result = CliRunner().invoke(
        _cli(), ["--workdir", str(tmp_path / "w"), "data", "ingest", str(good), str(bad)]
    )
    assert result.exit_code == 1
    assert "broken.csv" in result.output and "missing required column" in result.output
    assert "label_not_binary (3)" in result.output
    assert EventLog(tmp_path / "w" / "eventlog").count() == 6
    assert CliRunner().invoke(_cli(), ["data", "ingest", "--help"]).exit_code == 0


def test_cli_data_describe_lists_and_shows_descriptions():
    runner = CliRunner()
    listing = runner.invoke(_cli(), ["data", "describe"])
    assert listing.exit_code == 0 and "movielens-1m-tail" in listing.output
    shown = runner.invoke(_cli(), ["data", "describe", "movielens-100k-autoint"])
    assert shown.exit_code == 0 and "rating > 3" in shown.output and "rating == 3" in shown.output
    assert "item_genres" in shown.output
    missing = runner.invoke(_cli(), ["data", "describe", "nope"])
    assert missing.exit_code == 1 and "unknown dataset 'nope'" in missing.output
