"""The freshrec Feast repo for the ``feast`` CLI.

Every object comes from :func:`freshrec.features.definitions.make_definitions`, the same function the
library applies in-process, so the CLI and ``freshrec features apply`` register identical objects.
The tables are the settings' (``<workdir>/tables``: ``FRESHREC_WORKDIR``, ``FRESHREC_CONFIG``), written by
``freshrec data prepare`` and ``freshrec features apply``; the YAML files name the same workdir through
``${FRESHREC_WORKDIR}``, so export it (an absolute path) before running the ``feast`` CLI.

    export FRESHREC_WORKDIR=$PWD/.freshrec
    freshrec data prepare && freshrec features apply          # writes the tables (and applies)
    feast -c feature_repo apply                                # local: SQLite online, file registry
    feast -c feature_repo materialize 1970-01-01T00:00:00 $(date -u +%Y-%m-%dT%H:%M:%S)  # first time
    feast -c feature_repo -f feature_repo/feature_store.redis.yaml apply   # Redis + PostgreSQL registry
"""

from freshrec.config import load_settings
from freshrec.features.definitions import make_definitions

# This file is an entry point (the feast CLI imports it), so it may read the settings.
_settings = load_settings()
_defs = make_definitions(_settings.tables_dir, _settings.features.ttl_days)

# entities
user = _defs.entities["user"]
item = _defs.entities["item"]

# sources (batch Parquet files and the push sources the online learner writes to)
user_profile_source = _defs.sources["user_profile_source"]
item_profile_source = _defs.sources["item_profile_source"]
user_activity_source = _defs.sources["user_activity_source"]
item_activity_source = _defs.sources["item_activity_source"]
user_activity_push = _defs.sources["user_activity_push"]
item_activity_push = _defs.sources["item_activity_push"]

# feature views
user_profile_fv = _defs.views["user_profile_fv"]
item_profile_fv = _defs.views["item_profile_fv"]
user_activity_fv = _defs.views["user_activity_fv"]
item_activity_fv = _defs.views["item_activity_fv"]

# feature services (versioned)
ranking_v1 = _defs.services["ranking_v1"]
