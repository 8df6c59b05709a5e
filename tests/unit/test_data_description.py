"""The description format's newer fields: event-level features, several files, given splits, native
Parquet types, optional user/item tables, timestamp-free data, the activity option, exact split cuts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from freshrec.data.datasets import (
    NO_TIMESTAMP,
    load_dataset,
    load_description,
    split_cuts,
    split_events,
)
from freshrec.features.activity import ITEM_ACTIVITY, USER_ACTIVITY
from freshrec.features.training_set import build_training_frame, training_frames
from freshrec.model.spec import FeatureSpec, collision_share

# Every new field at once: given split files (Parquet, native types), several files for one split (a glob),
# event-level features of each type with and without an encoding, a time part, a kept column, no user
# table, an item table, activity switched on with its history rule, vocabulary limits.
FULL_YAML = """
name: ads
split: files
events:
  splits:
    train: ["train-*.parquet"]
    valid: valid.parquet
    test: [test.parquet]
  format: {type: parquet}
  user_key: uid
  item_key: ad
  timestamp: {column: shown_at}
  label: clicked == 1
  event_id: "{_file}:{_row}"
  keep: [campaign]
  features:
    ctx_device: {type: categorical, from: device}
    ctx_site: {type: categorical, from: site, encoding: hash, num_bins: 512}
    ctx_slot: {type: categorical, from: slot, max_vocab: 2}
    ctx_price: {type: numeric, from: price, log1p: true}
    ctx_position: {type: numeric, dtype: int64, from: position, encoding: bucketize, num_buckets: 4}
    ctx_tags: {type: multi_categorical, from: tags}
    ctx_words: {type: multi_categorical, from: words, split: " "}
    ctx_hour: {type: categorical, time_part: hour}
items:
  file: ads.csv
  format: {header: true}
  key: ad
  features:
    item_brand: {type: categorical, from: brand}
activity: {enabled: true, history: train}
vocabulary: {max_size: 1000, collision_target: 0.01}
"""


def _ads_part(rng: np.random.Generator, n: int, start: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "uid": rng.integers(1, 30, n).astype("int64"),  # native ints, not text
            "ad": rng.choice(["a1", "a2", "a3", "a4"], n),
            "shown_at": pd.date_range(start, periods=n, freq="17min", tz="UTC"),  # native timestamps
            "clicked": rng.integers(0, 2, n).astype("int64"),
            "campaign": rng.integers(100, 103, n),
            "device": rng.choice(["ios", "android", "web"], n),
            "site": rng.choice([f"s{i}" for i in range(40)], n),
            "slot": rng.choice(["top", "side", "bottom"], n),
            "price": rng.gamma(2.0, 3.0, n),
            "position": rng.integers(1, 9, n).astype("int64"),
            "tags": [list(rng.choice(["x", "y", "z"], rng.integers(0, 3), replace=False)) for _ in range(n)],
            "words": rng.choice(["red car", "blue car", "car", ""], n),
        }
    )


def _ads(tmp_path, yaml_text: str = FULL_YAML):
    rng = np.random.default_rng(3)
    folder = tmp_path / "ads"
    folder.mkdir()
    _ads_part(rng, 120, "2024-01-01").to_parquet(folder / "train-0.parquet")
    _ads_part(rng, 80, "2024-01-03").to_parquet(folder / "train-1.parquet")
    _ads_part(rng, 50, "2024-01-02").to_parquet(folder / "valid.parquet")
    _ads_part(rng, 60, "2024-01-01").to_parquet(folder / "test.parquet")
    (folder / "ads.csv").write_text("ad,brand\na1,acme\na2,acme\na3,zen\n")
    desc_path = tmp_path / "ads.yaml"
    desc_path.write_text(yaml_text)
    return load_description(desc_path), tmp_path


def test_a_description_using_every_new_field(tmp_path):
    desc, datasets_dir = _ads(tmp_path)
    ds = load_dataset(desc, datasets_dir)
    ev = ds.events
    assert ds.rejected.empty and len(ev) == 310
    # given splits follow the files (a glob read in sorted order), whatever the times
    assert ev["split"].value_counts().to_dict() == {"train": 200, "test": 60, "valid": 50}
    assert set(ev.loc[ev["split"] == "train", "event_id"].str.split(":").str[0]) == {
        "train-0.parquet",
        "train-1.parquet",
    }
    # native types without a text round trip: timestamps as they are, integer ids as their digits
    raw = pd.read_parquet(datasets_dir / "ads" / "valid.parquet")
    valid = ev[ev["split"] == "valid"].set_index("event_id").loc[[f"valid.parquet:{i}" for i in range(50)]]
    assert (valid["event_timestamp"].to_numpy() == raw["shown_at"].to_numpy()).all()
    assert valid["user_id"].tolist() == [str(u) for u in raw["uid"]]
    assert valid["ctx_hour"].tolist() == [str(t.hour) for t in raw["shown_at"]]
    assert valid["ctx_tags"].tolist() == ["|".join(sorted(t)) for t in raw["tags"]]
    assert valid["ctx_words"].tolist() == ["|".join(sorted(set(w.split()))) for w in raw["words"]]
    assert valid["campaign"].dtype == np.int64 and valid["ctx_position"].dtype == np.int64
    # no user table: users are their ids; the item table gives item_brand ("" for an ad it lacks)
    assert list(ds.users.columns) == ["user_id"] and set(ds.users["user_id"]) == set(ev["user_id"])

    train, valid_df, test = training_frames(ds)
    assert [len(train), len(valid_df), len(test)] == [200, 50, 60]
    assert set(test["item_brand"]) == {"acme", "zen", ""}
    spec = FeatureSpec.for_description(desc, id_hash_buckets=256, frame=train)
    names = spec.input_names
    for name in ["ctx_device", "ctx_site", "ctx_slot", "ctx_price", "ctx_position", "ctx_tags", "ctx_hour"]:
        assert name in names
    assert set(USER_ACTIVITY + ITEM_ACTIVITY) <= set(names)
    assert "campaign" not in names and "split" not in names  # kept, stored, not an input
    enc = {f.name: (f.encoding, f.params) for f in spec.features}
    assert enc["ctx_device"][0] == "lookup" and enc["ctx_device"][1]["vocabulary"] == [
        "android",
        "ios",
        "web",
    ]
    assert enc["ctx_site"] == ("hash", {"num_bins": 512})
    assert enc["ctx_slot"][0] == "hash"  # 3 values > max_vocab 2: hashed, sized for a 1% collision target
    bins = enc["ctx_slot"][1]["num_bins"]
    assert collision_share(3, bins) <= 0.01 < collision_share(3, bins // 2)
    assert enc["ctx_price"][0] == "normalize" and enc["ctx_price"][1]["log1p"] is True
    assert enc["ctx_position"][0] == "bucketize" and len(enc["ctx_position"][1]["boundaries"]) <= 4
    assert enc["ctx_tags"][0] == enc["ctx_words"][0] == "multi_hash"
    assert enc["item_brand"][0] == "lookup"


def test_describe_prints_every_model_input_and_warns_of_unused_kept_columns(tmp_path):
    from freshrec.cli import _register, app

    _register()
    desc, datasets_dir = _ads(tmp_path)
    args = ["--workdir", str(tmp_path / "wd"), "data", "describe", str(tmp_path / "ads.yaml")]
    result = CliRunner().invoke(app, [*args, "--datasets-dir", str(datasets_dir)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    spec = FeatureSpec.for_description(desc, frame=training_frames(load_dataset(desc, datasets_dir))[0])
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 3}
    assert set(spec.input_names) <= set(rows)
    assert "3 values + 1 OOV" in rows["ctx_device"] and "events" in rows["ctx_device"]
    assert "512 buckets" in rows["ctx_site"] and "hour of the event time" in rows["ctx_hour"]
    assert "kept columns campaign" in result.output and "not model inputs" in result.output
    assert "sized from the train split (200 events)" in " ".join(result.output.split())


SPLIT_COLUMN_YAML = """
name: folds
split: column
events:
  files: [part-a.csv, part-b.csv]
  format: {header: true}
  user_key: u
  item_key: i
  label: y == 1
  split_column: {column: fold, train: ["0", "1"], valid: "2", test: "3"}
  features:
    ctx_country: {type: categorical, from: country, default: unknown}
"""


def test_split_column_several_files_and_no_timestamps(tmp_path):
    (tmp_path / "part-a.csv").write_text("u,i,y,fold,country\n1,a,1,0,de\n2,b,0,1,\n3,a,0,2,fr\n")
    (tmp_path / "part-b.csv").write_text("u,i,y,fold,country\n1,b,1,3,de\n2,a,0,9,fr\n4,c,1,0,it\n")
    (tmp_path / "folds.yaml").write_text(SPLIT_COLUMN_YAML)
    desc = load_description(tmp_path / "folds.yaml")
    assert not desc.activity_enabled  # default off without a time split
    ds = load_dataset(desc, tmp_path)
    ev = ds.events.set_index("event_id")
    # no timestamp: every event at one documented instant, ids from file and row
    assert (ev["event_timestamp"] == NO_TIMESTAMP).all()
    assert sorted(ev.index) == [
        "part-a.csv:0",
        "part-a.csv:1",
        "part-a.csv:2",
        "part-b.csv:0",
        "part-b.csv:2",
    ]
    assert ev.loc["part-a.csv:1", "ctx_country"] == "unknown"
    # a fold value that is none of the described ones is rejected with its reason and origin
    assert ds.rejected["reasons"].tolist() == ["split_unknown"]
    assert ds.rejected[["source_file", "source_row", "fold"]].values.tolist() == [["part-b.csv", "1", "9"]]
    train, valid, test = split_events(ds.events, desc)
    assert sorted(train["event_id"]) == ["part-a.csv:0", "part-a.csv:1", "part-b.csv:2"]
    assert valid["event_id"].tolist() == ["part-a.csv:2"] and test["event_id"].tolist() == ["part-b.csv:0"]
    frames = training_frames(ds)
    assert not set(USER_ACTIVITY) & set(frames[0].columns)  # no time-window features
    spec = FeatureSpec.for_description(desc, frame=frames[0])
    assert spec.input_names == ["user_id", "item_id", "ctx_country"]
    assert FeatureSpec.for_description(desc).input_names == ["user_id", "item_id", "ctx_country"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("split: column", "split: time needs events.timestamp"),
        ("activity: true", "activity features need events.timestamp"),
        ("split_fractions: [0.8, 0.3]", "split_fractions apply to split: time|random"),
        (
            "items: {file: x.csv, format: {header: true}, key: i, features: {ctx_country: {type: numeric, from: q}}}",
            "described in both",
        ),
        (
            "users: {file: x.csv, format: {header: true}, key: u, features: {split: {type: categorical, from: q}}}",
            "reserved",
        ),
    ],
)
def test_inconsistent_descriptions_are_refused(tmp_path, change, message):
    text = SPLIT_COLUMN_YAML
    if change == "split: column":
        text = text.replace("split: column", "split: time").replace("  split_column:", "  # split_column:")
    else:
        text += change + "\n"
    (tmp_path / "d.yaml").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_description(tmp_path / "d.yaml")


def test_given_split_files_must_all_be_there(tmp_path):
    desc, datasets_dir = _ads(tmp_path)
    (datasets_dir / "ads" / "valid.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"valid file valid\.parquet"):
        load_dataset(desc, datasets_dir)
    bad = tmp_path / "bad.yaml"
    bad.write_text(FULL_YAML.replace("    valid: valid.parquet\n", ""))
    with pytest.raises(ValueError, match=r"no files for \['valid'\]"):
        load_description(bad)


@pytest.mark.parametrize(
    ("n", "fractions", "sizes"),
    [
        (10, (0.7, 0.2, 0.1), [7, 2, 1]),
        (45, (0.7, 0.2, 0.1), [32, 9, 4]),  # cuts at 31.5 and 40.5, both rounded half up
        (5, (0.7, 0.2, 0.1), [4, 1, 0]),
        (200_042, (0.8, 0.1, 0.1), [160_034, 20_004, 20_004]),
        (1000, (0.5, 0.25), [500, 250]),  # fractions summing to less than 1 leave the rest out
    ],
)
def test_split_cuts_follow_the_stated_rounding_rule(n, fractions, sizes):
    cuts = split_cuts(n, fractions)
    assert [b - a for a, b in cuts] == sizes
    assert all(cuts[i][1] == cuts[i + 1][0] for i in range(len(cuts) - 1))


def test_float_fractions_are_exact_decimals():
    # 0.7 + 0.2 is 0.8999999999999999 in binary floats; np.round of it times 45 is 40, not 40.5 -> 41
    assert np.round((0.7 + 0.2) * 45) == 40
    assert split_cuts(45, (0.7, 0.2, 0.1))[1][1] == 41
    assert split_cuts(3, (0.1, 0.2, 0.7)) == [(0, 0), (0, 1), (1, 3)]
    with pytest.raises(ValueError, match="fractions"):
        split_cuts(10, (0.7, 0.2, 0.2))


def test_description_fractions_win_and_random_split_keeps_its_sets(tmp_path):
    desc, datasets_dir = _ads(tmp_path)
    events = load_dataset(desc, datasets_dir).events.drop(columns=["split"])
    rnd = load_description("movielens-100k-autoint").model_copy(update={"split_fractions": [0.7, 0.2, 0.1]})
    parts = split_events(events, rnd, (0.8, 0.1, 0.1))
    assert [len(p) for p in parts] == [217, 62, 31]  # 310 rows at 0.7/0.2/0.1: cuts 217, 279
    again = split_events(events.sample(frac=1.0, random_state=5), rnd)
    assert all(a["event_id"].tolist() == b["event_id"].tolist() for a, b in zip(parts, again, strict=True))


def _activity_of(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.set_index("event_id")[USER_ACTIVITY + ITEM_ACTIVITY].sort_index()


@pytest.mark.parametrize("history", ["train", "earlier_splits"])
def test_activity_never_comes_from_a_later_split(tmp_path, history):
    """Flipping every valid and test label leaves the train rows' activity unchanged; under
    ``history: train`` the valid and test rows' too (no label of theirs reaches any feature)."""
    yaml_text = FULL_YAML.replace("history: train", f"history: {history}")
    desc, datasets_dir = _ads(tmp_path, yaml_text)
    ds = load_dataset(desc, datasets_dir)
    before = training_frames(ds)
    flipped = ds.events.copy()
    later = flipped["split"] != "train"
    flipped.loc[later, "label"] = (1 - flipped.loc[later, "label"]).astype("int8")
    after = training_frames(type(ds)(flipped, ds.users, ds.items, desc))
    pd.testing.assert_frame_equal(_activity_of(before[0]), _activity_of(after[0]))
    if history == "train":
        for k in (1, 2):
            pd.testing.assert_frame_equal(_activity_of(before[k]), _activity_of(after[k]))
    else:  # a row may see earlier rows of its own split: the test rows' features do move
        assert not _activity_of(before[2]).equals(_activity_of(after[2]))
    # the old way (activity over the concatenated file) leaks later-split labels into train rows
    leaky = build_training_frame(ds.events, ds.users, ds.items)
    leaky_flipped = build_training_frame(flipped, ds.users, ds.items)
    train_ids = ds.events.loc[ds.events["split"] == "train", "event_id"]
    assert not _activity_of(leaky[leaky["event_id"].isin(train_ids)]).equals(
        _activity_of(leaky_flipped[leaky_flipped["event_id"].isin(train_ids)])
    )


def test_time_split_frames_are_what_the_frame_of_all_events_gives():
    """Under a time split, per-split activity (earlier splits) equals activity over all events: the
    MovieLens behaviour is unchanged."""
    from freshrec.data.synthetic import generate

    ds = generate(n_events=3000, n_users=40, n_items=30, seed=4)
    parts = training_frames(ds, (0.8, 0.1, 0.1))
    whole = split_events(build_training_frame(ds.events, ds.users, ds.items), ds.description, (0.8, 0.1, 0.1))
    for a, b in zip(parts, whole, strict=True):
        pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_like=True)


def test_the_readme_description_validates():
    import re
    from pathlib import Path

    import yaml

    from freshrec.data.datasets import DatasetDescription

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Your own dataset")[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    desc = DatasetDescription.model_validate(yaml.safe_load(block[1]))
    assert desc.split == "files" and desc.events.timestamp is None and desc.users is None
    assert set(desc.event_features) == {"device", "site", "price", "slot", "keywords"}
    assert not desc.activity_enabled and desc.vocabulary.max_size == 100_000
