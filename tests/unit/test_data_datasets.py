"""Declarative descriptions, a user-written dataset, and the splits."""

from __future__ import annotations

import pandas as pd
import pytest

from freshrec.data.datasets import (
    Condition,
    DatasetDescription,
    available_descriptions,
    load_dataset,
    load_description,
    random_split,
    split_events,
    time_split,
)
from freshrec.data.validation import FileFormatError, validate_events

PROFILE_TYPES = {
    "user_gender": "categorical",
    "user_age": "numeric",
    "user_occupation": "categorical",
    "user_zip_prefix": "categorical",
    "item_genres": "multi_categorical",
    "item_year": "numeric",
}


@pytest.mark.parametrize(
    "name", ["movielens-100k", "movielens-1m-tail", "movielens-100k-autoint", "synthetic"]
)
def test_shipped_descriptions_share_the_profile_features(name):
    desc = load_description(name)
    assert desc.name == name
    assert desc.feature_types() == PROFILE_TYPES
    assert desc.feature_dtypes()["user_age"] == "int64" and desc.feature_dtypes()["item_genres"] == "string"


def test_default_and_autoint_rules():
    assert load_description().name == "movielens-100k"
    assert set(available_descriptions()) >= {"movielens-100k", "movielens-1m-tail", "movielens-100k-autoint"}
    auto = load_description("movielens-100k-autoint")
    assert str(auto.events.label) == "rating > 3" and str(auto.events.drop) == "rating == 3"
    assert auto.split == "random"
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        load_description("nope")


@pytest.mark.parametrize(
    ("text", "values", "expected"),
    [
        ("rating >= 4", ["3", "4", "5", "x"], [False, True, True, False]),
        ("rating > 3", ["3", "4"], [False, True]),
        ("rating == 3", ["3", "3.0", "2"], [True, True, False]),
        ("kind == 'click'", ["click", "view"], [True, False]),
    ],
)
def test_conditions(text, values, expected):
    cond = Condition.parse(text)
    assert cond.evaluate(pd.DataFrame({cond.column: values})).tolist() == expected


@pytest.mark.parametrize("text", ["rating >=", "import os", "rating ~ 4", "rating >= four"])
def test_bad_conditions_are_rejected(text):
    with pytest.raises(ValueError, match="condition"):
        Condition.parse(text)


USER_YAML = """
name: shop
dir_names: [shop-data]
events:
  file: clicks.csv
  format: {delimiter: ",", header: true}
  user_key: customer
  item_key: sku
  timestamp: {column: ts, unit: null, format: "%Y-%m-%d %H:%M:%S"}
  label: action == 'buy'
  event_id: "{customer}:{sku}:{ts}"
users:
  file: customers.tsv
  format: {delimiter: "\\t", header: true}
  key: customer
  id_prefix: "c-"
  features:
    user_region: {type: categorical, from: region, map: {N: north, S: south}}
    user_age: {type: numeric, dtype: int64, from: age, default: -1}
items:
  file: products.csv
  format: {delimiter: ";", header: false}
  columns: [sku, name, tags]
  key: sku
  features:
    item_tags: {type: multi_categorical, from: tags, split: ",", exclude: [misc]}
    item_year: {type: numeric, dtype: int64, from: name, regex: '\\((\\d{4})\\)', default: 0}
"""


def _user_dataset(tmp_path):
    folder = tmp_path / "data" / "shop-data"
    folder.mkdir(parents=True)
    (folder / "clicks.csv").write_text(
        "customer,sku,ts,action\n"
        "1,A,2024-01-02 10:00:00,buy\n"
        "2,B,2024-01-01 09:00:00,view\n"
        "1,B,2024-01-03 08:00:00,view\n"
    )
    (folder / "customers.tsv").write_text("customer\tregion\tage\n1\tN\t31\n2\tW\t\n")
    (folder / "products.csv").write_text("A;Lamp (2019);home,misc,light\nB;Chair;home\n")
    desc_path = tmp_path / "shop.yaml"
    desc_path.write_text(USER_YAML)
    return desc_path, tmp_path / "data"


def test_user_brings_a_dataset_by_writing_a_description(tmp_path):
    desc_path, datasets_dir = _user_dataset(tmp_path)
    ds = load_dataset(load_description(desc_path), datasets_dir)
    ev = ds.events
    assert ev["event_id"].tolist() == [
        "2:B:2024-01-01 09:00:00",
        "1:A:2024-01-02 10:00:00",
        "1:B:2024-01-03 08:00:00",
    ]
    assert ev["user_id"].tolist() == ["c-2", "c-1", "c-1"]
    assert ev["label"].tolist() == [0, 1, 0] and ev["label"].dtype == "int8"
    assert str(ev["event_timestamp"].dtype) == "datetime64[ns, UTC]"
    assert ds.users.to_dict("records") == [
        {"user_id": "c-1", "user_region": "north", "user_age": 31},
        {"user_id": "c-2", "user_region": "W", "user_age": -1},
    ]
    assert ds.items.to_dict("records") == [
        {"item_id": "A", "item_tags": "home|light", "item_year": 2019},
        {"item_id": "B", "item_tags": "home", "item_year": 0},
    ]
    # loaded events pass validation unchanged
    result = validate_events(ev)
    assert len(result.accepted) == 3


def test_description_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(USER_YAML.replace("type: categorical", "type: fancy"))
    with pytest.raises(ValueError, match=r"invalid dataset description .*bad.yaml"):
        load_description(bad)
    bad.write_text(USER_YAML.replace("from: region,", "from: region, flags_prefix: x,"))
    with pytest.raises(ValueError, match="exactly one of"):
        load_description(bad)
    with pytest.raises(FileNotFoundError):
        load_description(tmp_path / "missing.yaml")


def test_missing_files_and_wrong_column_counts(tmp_path):
    desc_path, datasets_dir = _user_dataset(tmp_path)
    desc = load_description(desc_path)
    with pytest.raises(FileNotFoundError, match=r"clicks\.csv"):
        load_dataset(desc, tmp_path / "elsewhere")
    (datasets_dir / "shop-data" / "products.csv").write_text("A;Lamp;home;extra\n")
    with pytest.raises(FileFormatError, match=r"products.csv: expected 3 columns, found 4"):
        load_dataset(desc, datasets_dir)


def _events(n: int) -> pd.DataFrame:
    ts = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta([i // 3 for i in range(n)], unit="h")  # ties
    return pd.DataFrame(
        {
            "event_id": [f"e{(i * 7919) % n:05d}" for i in range(n)],
            "event_timestamp": ts,
            "user_id": "u",
            "item_id": "i",
            "label": pd.Series([i % 2 for i in range(n)], dtype="int8"),
        }
    ).sample(frac=1.0, random_state=1)


def test_time_split_orders_by_time_and_breaks_ties_deterministically():
    ev = _events(1000)
    train, valid, test = time_split(ev)
    assert (len(train), len(valid), len(test)) == (800, 100, 100)
    assert train["event_timestamp"].max() <= valid["event_timestamp"].min()
    assert valid["event_timestamp"].max() <= test["event_timestamp"].min()
    again = time_split(ev.sample(frac=1.0, random_state=7))
    for a, b in zip((train, valid, test), again, strict=True):
        assert a["event_id"].tolist() == b["event_id"].tolist()
    assert sum(len(p) for p in time_split(ev, (0.5, 0.5))) == 1000
    with pytest.raises(ValueError, match="fractions"):
        time_split(ev, (0.8, 0.5))


def test_random_split_is_seeded_and_disjoint():
    ev = _events(1000)
    a = random_split(ev, (0.8, 0.1, 0.1), seed=1)
    b = random_split(ev, (0.8, 0.1, 0.1), seed=1)
    c = random_split(ev, (0.8, 0.1, 0.1), seed=2)
    assert [len(p) for p in a] == [800, 100, 100]
    assert all(x["event_id"].tolist() == y["event_id"].tolist() for x, y in zip(a, b, strict=True))
    assert a[2]["event_id"].tolist() != c[2]["event_id"].tolist()
    ids = [set(p["event_id"]) for p in a]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and len(set.union(*ids)) == 1000
    # the random test part spans the whole period, unlike a time split's
    assert a[2]["event_timestamp"].min() < time_split(ev)[2]["event_timestamp"].min()


def test_split_events_follows_the_description():
    ev = _events(200)
    auto: DatasetDescription = load_description("movielens-100k-autoint")
    assert [p["event_id"].tolist() for p in split_events(ev, auto)] == [
        p["event_id"].tolist() for p in random_split(ev, seed=auto.split_seed)
    ]
    ml = load_description("movielens-100k")
    assert [p["event_id"].tolist() for p in split_events(ev, ml)] == [
        p["event_id"].tolist() for p in time_split(ev)
    ]


def test_rows_that_cannot_be_events_are_rejected_with_reasons(tmp_path):
    desc_path, datasets_dir = _user_dataset(tmp_path)
    clicks = datasets_dir / "shop-data" / "clicks.csv"
    clicks.write_text(
        clicks.read_text()
        + ",C,2024-01-04 08:00:00,buy\n"  # no customer
        + "3,C,04/01/2024,view\n"  # timestamp not in the described format
        + "3,,,view\n"
    )
    ds = load_dataset(load_description(desc_path), datasets_dir)
    assert len(ds.events) == 3
    assert ds.rejected["reasons"].tolist() == [
        "user_id_empty",
        "timestamp_unparseable",
        "item_id_empty;timestamp_missing",
    ]
    assert ds.rejected["ts"].tolist() == ["2024-01-04 08:00:00", "04/01/2024", ""]  # raw values kept


def test_label_rule_on_a_non_numeric_value_is_rejected(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "r.csv").write_text("u,i,t,rating\n1,a,100,5\n1,b,101,\n2,a,102,five\n")
    (folder / "u.csv").write_text("u\n1\n2\n")
    (folder / "i.csv").write_text("i\na\nb\n")
    yaml_text = """
name: r
events: {file: r.csv, format: {header: true}, user_key: u, item_key: i, timestamp: {column: t}, label: rating >= 4,
         event_id: "{u}-{i}-{t}"}
users: {file: u.csv, format: {header: true}, key: u}
items: {file: i.csv, format: {header: true}, key: i}
"""
    (tmp_path / "r.yaml").write_text(yaml_text)
    ds = load_dataset(load_description(tmp_path / "r.yaml"), tmp_path)
    assert ds.events["event_id"].tolist() == ["1-a-100"] and ds.events["label"].tolist() == [1]
    assert ds.rejected["reasons"].tolist() == ["label_unparseable", "label_unparseable"]


def test_the_documented_example_description_validates():
    import yaml

    from freshrec.data import datasets

    block = datasets.__doc__.split("A minimal description::\n\n")[1].split("\n\nDerivations")[0]
    text = "\n".join(line[4:] for line in block.splitlines())
    desc = DatasetDescription.model_validate(yaml.safe_load(text))
    assert desc.feature_types()["item_tags"] == "multi_categorical"
    assert str(desc.events.label) == "action == 'buy'"
