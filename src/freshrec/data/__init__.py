"""Events, datasets and the event log.

Event frame (pandas): ``event_id`` str, ``event_timestamp`` datetime64[ns, UTC], ``user_id`` str,
``item_id`` str, ``label`` int8 in {0, 1}; extra context columns are kept.

- :mod:`freshrec.data.datasets`: declarative dataset descriptions, the loader, time/random splits;
- :mod:`freshrec.data.synthetic`: a seeded generator with known preferences and injectable drift;
- :mod:`freshrec.data.validation`: row validation with quarantine reasons, ``FileFormatError``;
- :mod:`freshrec.data.eventlog`: the append-only, date-partitioned Parquet event log;
- :mod:`freshrec.data.ingest` / :mod:`freshrec.data.prepare`: files and datasets into the event log.

Import the submodules directly; this package imports nothing so that ``freshrec --help`` stays fast.
"""
