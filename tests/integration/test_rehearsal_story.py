"""The cluster rehearsal's story on every overlay, and the breaks it must catch.

No cluster runs here: ``freshrec.cluster.rehearsal`` runs the rendered overlay (``kubectl kustomize``) and
the compiled pipeline YAML as written on this machine — pods as sandboxed processes with their mounts, an
API server enforcing the rendered RBAC, stand-ins for Argo Rollouts, KFP and Prometheus (see its module
docstring). Needs root (network and mount namespaces), as CI runs it; the local Redis and PostgreSQL.
"""

from __future__ import annotations

import copy
import os
import shutil

import pytest

from freshrec.cluster.rehearsal import OVERLAYS, REPO, Rehearsal
from freshrec.cluster.rehearsal_breaks import BREAKS
from freshrec.cluster.rehearsal_objects import kustomize

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="the rehearsal needs root (network and mount namespaces), as CI runs it"
    ),
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not on PATH"),
]


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory):
    """One day-0 model for every rehearsal of this module (what ``freshrec train --publish`` made)."""
    return tmp_path_factory.mktemp("bootstrap")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_story_meets_every_connection_on_each_overlay(overlay, bootstrap, tmp_path):
    report = Rehearsal(overlay, work_root=tmp_path / "r", bootstrap_cache=bootstrap).run()
    assert report.ok, report.summary()
    names = [c.name for c in report.exercised]
    assert len(names) >= 12, names
    for arrow in (
        "user -> KFP API -> pipeline run",
        "rollout task -> Kubernetes API -> Rollout",
        "gateway -> prediction log -> analysis Job",
        "prediction log + clicks -> analysis Job verdict",
        "canary verdict -> Rollout promoted/aborted -> rollout task",
        "event stream -> online learner",
        "online learner -> model repository -> TF Serving",
        "event log + reference profile -> drift CronJob",
    ):
        assert arrow in names, report.summary()


@pytest.fixture(scope="module")
def rendered():
    return kustomize(REPO / "manifests" / "overlays" / "local")


@pytest.mark.parametrize("kind", sorted(BREAKS))
def test_an_injected_break_fails_the_rehearsal_naming_both_ends(kind, rendered, bootstrap, tmp_path):
    docs = copy.deepcopy(rendered)
    one_end, other_end = BREAKS[kind](docs)
    report = Rehearsal("local", docs=docs, work_root=tmp_path / "r", bootstrap_cache=bootstrap).run()
    assert not report.ok
    failure = report.failure
    assert failure is not None and failure["kind"] != "rehearsal-error", report.summary()
    ends = f"{failure['writer']} | {failure['reader']} | {failure['detail']}"
    assert one_end in ends and other_end in ends, report.summary()
    # Caught before the story gets far: the connections after the break are not reached.
    assert "online learner -> model repository -> TF Serving" not in [c.name for c in report.exercised]
