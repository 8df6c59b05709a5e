"""The checkov adapter: every pod of the render reaches the scanner, and every accepted finding is justified.

(The scan itself is ``make checkov``, run by ``.ci/run``: checkov lives in its own venv.)
"""

from __future__ import annotations

from pathlib import Path

from freshrec.cluster.rehearsal_objects import kustomize
from freshrec.cluster.scan import ACCEPTED, scannable, unaccepted

REPO = Path(__file__).resolve().parents[2]


def test_rollouts_and_analysis_jobs_become_kinds_checkov_reads():
    objs = kustomize(REPO / "manifests" / "overlays" / "production")
    scanned = scannable(objs)
    kinds = {(o["kind"], o["metadata"]["name"]) for o in scanned}
    assert ("Deployment", "ctr-serving") in kinds
    assert ("Job", "ctr-serving-online-quality-online-quality") in kinds
    assert not [o for o in scanned if o["kind"] in ("Rollout", "AnalysisTemplate")]
    rollout = next(o for o in objs if o["kind"] == "Rollout")
    deployment = next(
        o for o in scanned if o["kind"] == "Deployment" and o["metadata"]["name"] == "ctr-serving"
    )
    assert deployment["spec"]["template"] == rollout["spec"]["template"]


def test_every_accepted_finding_is_justified_in_the_manifests_readme():
    readme = (REPO / "manifests" / "README.md").read_text()
    for check in ACCEPTED:
        assert f"**{check} " in readme, check
    findings = [{"check": "CKV_K8S_43", "resource": "x"}, {"check": "CKV_K8S_20", "resource": "y"}]
    assert unaccepted(findings) == [{"check": "CKV_K8S_20", "resource": "y"}]
