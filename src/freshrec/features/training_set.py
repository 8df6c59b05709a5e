"""The training set in pure pandas: events + profile features + point-in-time activity features.

This is the reference implementation of what Feast's ``get_historical_features`` returns for the
``ranking_v1`` service (``freshrec.features.store.get_training_set`` is tested equal to it); it needs no
feature store, so training, evaluation and benchmarks can build the frame straight from an event log.

Profiles: a profile table may carry an ``event_timestamp`` column (Feast needs one); the join is then
point-in-time (the latest profile row stamped at or before the event), as Feast does it; without it the
latest row per id is used. Unknown ids get :data:`PROFILE_DEFAULTS` by dtype: ``""`` for strings, ``0``
for integers, ``0.0`` for floats (matching the data contract: ``item_genres=""``, ``item_year=0``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from freshrec.features.activity import ITEM_ACTIVITY, USER_ACTIVITY, activity_as_of_events

# columns of a profile table that are bookkeeping for Feast, not features
TIMESTAMP_COLUMNS = ("event_timestamp", "created", "created_timestamp")
PROFILE_DEFAULTS = {"string": "", "int": 0, "float": 0.0}


def profile_columns(profiles: pd.DataFrame, key: str) -> list[str]:
    """Feature columns of a profile table (everything but the key and timestamp columns)."""
    return [c for c in profiles.columns if c != key and c not in TIMESTAMP_COLUMNS]


def profile_default(dtype: np.dtype | pd.api.extensions.ExtensionDtype) -> object:
    """The documented fill value for a profile column of ``dtype``."""
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_integer_dtype(dtype):
        return PROFILE_DEFAULTS["int"]
    if pd.api.types.is_float_dtype(dtype):
        return PROFILE_DEFAULTS["float"]
    return PROFILE_DEFAULTS["string"]


def _join_profiles(events: pd.DataFrame, profiles: pd.DataFrame, key: str) -> pd.DataFrame:
    """Profile feature columns aligned with ``events`` rows (positional), defaults filled."""
    if key not in profiles.columns:
        raise ValueError(f"profile table lacks its key column {key!r}; has {list(profiles.columns)}")
    cols = profile_columns(profiles, key)
    left = pd.DataFrame({key: events[key].astype(str).to_numpy(), "_pos": np.arange(len(events))})
    right = profiles.copy()
    right[key] = right[key].astype(str)
    if "event_timestamp" in right.columns:
        left["event_timestamp"] = pd.DatetimeIndex(
            pd.to_datetime(events["event_timestamp"], utc=True)
        ).as_unit("ns")
        right["event_timestamp"] = pd.to_datetime(right["event_timestamp"], utc=True).dt.as_unit("ns")
        right = right.sort_values("event_timestamp", kind="stable")
        left = left.sort_values("event_timestamp", kind="stable")
        joined = pd.merge_asof(
            left, right[[key, "event_timestamp", *cols]], on="event_timestamp", by=key, direction="backward"
        )
    else:
        right = right.drop_duplicates(key, keep="last")
        joined = left.merge(right[[key, *cols]], on=key, how="left")
    joined = joined.sort_values("_pos").reset_index(drop=True)
    out = pd.DataFrame(index=range(len(events)))
    for col in cols:
        dtype = profiles[col].dtype
        values = joined[col].fillna(profile_default(dtype))
        if pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
            values = values.astype(np.int64)
        elif pd.api.types.is_float_dtype(dtype):
            values = values.astype(dtype)
        else:
            values = values.astype(str).astype(object)
        out[col] = values.to_numpy()
    return out


def build_training_frame(
    events: pd.DataFrame,
    users: pd.DataFrame,
    items: pd.DataFrame,
    *,
    activity: bool = True,
    history: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Event columns + user/item profile features + ``USER_ACTIVITY + ITEM_ACTIVITY``, one row per event.

    Rows keep the order of ``events`` (index reset). Activity features use only strictly earlier events of
    ``history`` (default: ``events`` itself; see :mod:`freshrec.features.activity`); ``activity=False``
    leaves them out (a dataset without them, see ``DatasetDescription.activity_enabled``).
    """
    for col in ("event_id", "event_timestamp", "user_id", "item_id", "label"):
        if col not in events.columns:
            raise ValueError(f"events frame lacks column {col!r}; has {list(events.columns)}")
    base = events.reset_index(drop=True)
    user_prof = _join_profiles(base, users, "user_id")
    item_prof = _join_profiles(base, items, "item_id")
    parts = [base, user_prof, item_prof]
    if activity:
        hist = None if history is None else history.reset_index(drop=True)
        parts.append(activity_as_of_events(base, hist)[USER_ACTIVITY + ITEM_ACTIVITY])
    return pd.concat(parts, axis=1)


def training_frames(
    dataset: Any, fractions: tuple[float, ...] | None = None, seed: int | None = None
) -> tuple[pd.DataFrame, ...]:
    """The train, valid and test frames of a loaded dataset, split as its description says.

    Profiles are joined to every row; activity features (when the description enables them) come from
    strictly earlier events of the row's own split and earlier splits (``activity.history:
    earlier_splits``; under a time split exactly what serving sees) or of the train split only
    (``train``): never from a later split, so no valid or test label reaches a training row.

    Args:
        dataset: a ``freshrec.data.datasets.Dataset`` (events, users, items, description).
        fractions: shares for ``split: time|random`` when the description gives none.
        seed: overrides the description's ``split_seed``.
    """
    from freshrec.data.datasets import sort_events, split_count, split_labels

    desc = dataset.description
    events = dataset.events.reset_index(drop=True)
    labels = split_labels(events, desc, fractions, seed)
    out = []
    for k in range(split_count(desc, fractions)):
        rows = events.loc[labels == k]
        history = None
        if desc.activity_enabled:
            history = events.loc[labels == 0] if desc.activity_history == "train" else events.loc[labels <= k]
        frame = build_training_frame(
            sort_events(rows), dataset.users, dataset.items, activity=desc.activity_enabled, history=history
        )
        out.append(frame)
    return tuple(out)
