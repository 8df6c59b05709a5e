"""The Feast objects of freshrec: entities, sources, feature views, the ranking feature service.

They are built by :func:`make_definitions` for a tables directory chosen at run time (the workdir's
``tables/``), so the library can apply them in-process with ``FeatureStore(config=RepoConfig(...))``;
``feature_repo/definitions.py`` calls the same function with a path relative to the checked-in repo
for users of the ``feast`` CLI. One place defines every object, so the two cannot drift apart.

- entities ``user`` (``user_id``) and ``item`` (``item_id``);
- ``user_profile_source``/``item_profile_source``: ``users.parquet``/``items.parquet`` (written by
  ``freshrec data prepare`` with ``event_timestamp`` = start of the data and ``created``); their feature
  columns are inferred at apply time, so a dataset brings its own profile features by description;
  TTL 0 (profiles never expire);
- ``user_activity_source``/``item_activity_source``: ``user_activity.parquet``/``item_activity.parquet``
  (:func:`freshrec.features.activity.compute_activity`), each behind a push source
  (``user_activity_push``/``item_activity_push``) so the online learner can push fresh rows;
- views ``user_profile_fv``, ``item_profile_fv``, ``user_activity_fv``, ``item_activity_fv``;
- feature service ``ranking_v1`` over all four.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from freshrec.features.activity import ITEM_ACTIVITY, USER_ACTIVITY

PROJECT = "freshrec"
FEATURE_SERVICE = "ranking_v1"
TABLE_FILES = {
    "user_profile": "users.parquet",
    "item_profile": "items.parquet",
    "user_activity": "user_activity.parquet",
    "item_activity": "item_activity.parquet",
}
PUSH_SOURCES = {"user": "user_activity_push", "item": "item_activity_push"}
VIEW_NAMES = ["user_profile_fv", "item_profile_fv", "user_activity_fv", "item_activity_fv"]


@dataclass
class Definitions:
    """Every Feast object of the repo, by name, plus the list to hand to ``FeatureStore.apply``."""

    entities: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, Any] = field(default_factory=dict)
    views: dict[str, Any] = field(default_factory=dict)
    services: dict[str, Any] = field(default_factory=dict)

    @property
    def objects(self) -> list[Any]:
        return [
            *self.entities.values(),
            *self.sources.values(),
            *self.views.values(),
            *self.services.values(),
        ]


def make_definitions(tables_dir: str | Path, activity_ttl_days: int = 3650) -> Definitions:
    """Build the Feast objects reading Parquet files under ``tables_dir``.

    Args:
        tables_dir: directory of the four tables; a relative path is resolved by Feast against the
            repo path of the store (how the checked-in ``feature_repo/`` points at ``.freshrec/tables``).
        activity_ttl_days: how far back the point-in-time join may look for an activity row.
    """
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
    from feast.types import Float32

    tables = Path(tables_dir)
    d = Definitions()
    d.entities["user"] = Entity(
        name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="A person who sees items"
    )
    d.entities["item"] = Entity(
        name="item", join_keys=["item_id"], value_type=ValueType.STRING, description="A recommendable item"
    )
    for kind, filename in TABLE_FILES.items():
        d.sources[f"{kind}_source"] = FileSource(
            name=f"{kind}_source",
            path=str(tables / filename),
            timestamp_field="event_timestamp",
            # profiles carry `created` (first event of the id): a tie-breaker for Feast, not a feature
            created_timestamp_column="created" if kind.endswith("_profile") else "",
            description=f"{filename} under the workdir's tables directory",
        )
    for entity in ("user", "item"):
        d.sources[PUSH_SOURCES[entity]] = PushSource(
            name=PUSH_SOURCES[entity], batch_source=d.sources[f"{entity}_activity_source"]
        )
        # schema left out: Feast infers the profile columns from the Parquet file at apply time
        d.views[f"{entity}_profile_fv"] = FeatureView(
            name=f"{entity}_profile_fv",
            entities=[d.entities[entity]],
            ttl=timedelta(0),
            source=d.sources[f"{entity}_profile_source"],
            online=True,
            description=f"{entity} profile features from the dataset",
        )
        names = USER_ACTIVITY if entity == "user" else ITEM_ACTIVITY
        d.views[f"{entity}_activity_fv"] = FeatureView(
            name=f"{entity}_activity_fv",
            entities=[d.entities[entity]],
            ttl=timedelta(days=activity_ttl_days),
            schema=[Field(name=n, dtype=Float32) for n in names],
            source=d.sources[PUSH_SOURCES[entity]],
            online=True,
            description=f"{entity} activity as of before each timestamp (freshrec.features.activity)",
        )
    d.services[FEATURE_SERVICE] = FeatureService(
        name=FEATURE_SERVICE,
        features=[d.views[name] for name in VIEW_NAMES],
        description="Features of the CTR ranking model, version 1",
    )
    return d
