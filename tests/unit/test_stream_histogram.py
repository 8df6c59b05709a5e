"""The stream feature job's batch histogram exposes what prometheus_client's Histogram would."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from freshrec.features.stream import FRESHNESS_BUCKETS, BatchHistogram


def _samples(registry) -> dict[tuple, float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if not s.name.endswith("_created")
    }


def test_batches_of_observations_expose_the_same_buckets_count_and_sum_as_one_by_one():
    rng = np.random.default_rng(0)
    # values on the bounds too: Prometheus' le is inclusive
    values = np.r_[rng.exponential(0.5, 2000), list(FRESHNESS_BUCKETS), [0.0, 1e4]]
    reference = CollectorRegistry()
    one = Histogram("lag_seconds", "lag", ["model"], buckets=FRESHNESS_BUCKETS, registry=reference)
    for v in values:
        one.labels(model="ctr").observe(v)
    ours = CollectorRegistry()
    batch = BatchHistogram("lag_seconds", "lag", "ctr", FRESHNESS_BUCKETS)
    ours.register(batch)
    for part in np.array_split(values, 7):
        batch.observe_many(part)
    batch.observe_many(np.array([]))
    want, got = _samples(reference), _samples(ours)
    assert want.keys() == got.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key
    assert got[("lag_seconds_count", (("model", "ctr"),))] == len(values)
