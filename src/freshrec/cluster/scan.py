"""Static security scan of the rendered overlays with checkov, and the findings the project accepts.

checkov's Kubernetes framework does not parse Argo Rollouts' ``Rollout`` nor the Job inside an
``AnalysisTemplate``; :func:`scannable` renders those pod templates as the ``Deployment``/``Job`` they run as,
so every pod of the deployment is scanned. :data:`ACCEPTED` lists the checks that fail by design, each with
the reason also written in ``manifests/README.md``; :func:`unaccepted` is what must stay empty.

    make checkov        # every overlay; fails on a finding not in ACCEPTED
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

# check id -> why it stays (manifests/README.md, "checkov").
ACCEPTED: dict[str, str] = {
    "CKV_K8S_43": "images are tags; pin digests in your overlay once built (a template cannot know them)",
    "CKV_K8S_40": "the project image's user is 1000, Redis/PostgreSQL their images' 999 (non-root, read-only root)",
    "CKV_K8S_35": "PGPASSWORD from a secretKeyRef env var: libpq and kfp-kubernetes task specs read it so",
}


def scannable(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The objects, with each Rollout as a Deployment and each AnalysisTemplate Job as a Job."""
    out = []
    for obj in objects:
        if obj["kind"] == "Rollout":
            spec = obj["spec"]
            out.append(
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": copy.deepcopy(obj["metadata"]),
                    "spec": {
                        "replicas": spec.get("replicas", 1),
                        "selector": spec["selector"],
                        "template": copy.deepcopy(spec["template"]),
                    },
                }
            )
        elif obj["kind"] == "AnalysisTemplate":
            for metric in obj["spec"].get("metrics") or []:
                job = (metric.get("provider") or {}).get("job")
                if job:
                    meta = copy.deepcopy(obj["metadata"])
                    meta["name"] = f"{meta['name']}-{metric['name']}"
                    out.append(
                        {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job["spec"]}
                    )
        else:
            out.append(obj)
    return out


def run_checkov(checkov: str, objects: list[dict[str, Any]], workdir: Path) -> list[dict[str, Any]]:
    """Failed checks of checkov over ``objects`` (one file per object under ``workdir``)."""
    import yaml

    workdir.mkdir(parents=True, exist_ok=True)
    for i, obj in enumerate(scannable(objects)):
        (workdir / f"{i:03d}-{obj['kind']}-{obj['metadata']['name']}.yaml").write_text(yaml.safe_dump(obj))
    proc = subprocess.run(
        [
            checkov,
            "-d",
            str(workdir),
            "--framework",
            "kubernetes",
            "--skip-download",
            "--quiet",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if not proc.stdout.strip():
        raise RuntimeError(f"checkov wrote nothing (exit {proc.returncode}): {proc.stderr[-2000:]}")
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = []
    for r in reports:
        failed += (r.get("results") or {}).get("failed_checks") or []
    return [
        {"check": f["check_id"], "name": f.get("check_name", ""), "resource": f.get("resource", "")}
        for f in failed
    ]


def unaccepted(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in findings if f["check"] not in ACCEPTED]


def main() -> int:
    """Scan every overlay; print each finding; exit 1 on one that is not accepted."""
    import argparse
    import tempfile

    from freshrec.cluster.rehearsal_objects import kustomize

    parser = argparse.ArgumentParser(description="checkov over every rendered overlay")
    parser.add_argument("--checkov", default="checkov")
    parser.add_argument("overlays", nargs="*", default=["local", "gpu", "production"])
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[3] / "manifests" / "overlays"
    bad = 0
    for overlay in args.overlays:
        with tempfile.TemporaryDirectory(prefix=f"checkov-{overlay}-") as tmp:
            findings = run_checkov(args.checkov, kustomize(root / overlay), Path(tmp))
        by_check: dict[str, set[str]] = {}
        for f in findings:
            by_check.setdefault(f["check"], set()).add(f["resource"])
        for check, resources in sorted(by_check.items()):
            status = "accepted" if check in ACCEPTED else "FAIL"
            print(f"{overlay}: {status} {check} ({len(resources)} resources): {ACCEPTED.get(check, '')}")
            if check not in ACCEPTED:
                print("    " + ", ".join(sorted(resources)))
        bad += len(unaccepted(findings))
    print(f"checkov: {bad} finding(s) not accepted")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
