"""TF Serving's model config for one serving pod of the Argo Rollout.

Each pod of the ``ctr-serving`` Rollout serves the version its pod template names (the
``freshrec.io/model-version`` annotation: stable pods the stable version, canary pods the candidate), so the
canary and the stable arm differ only by that version. Online exports are published as new versions whose
``freshrec.json`` says ``source: online`` and names their ``parent_version``; they skip the canary (DESIGN):
a pod serves the newest online descendant of its own version. The ``model-config`` sidecar re-renders the
file when one appears, and TF Serving re-reads it (``--model_config_file_poll_wait_seconds``).

A canary pod's version is a batch candidate: the learner's exports descend from the stable version, not
from it, so the canary keeps serving exactly the candidate while it is analysed.

Only stdlib here (the sidecar runs beside every serving pod: no TensorFlow, no protobuf import).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)
METADATA_FILE = "freshrec.json"


def _metadata(base: Path, version: int) -> dict | None:
    folder = base / str(version)
    if not (folder / "saved_model.pb").is_file() or not (folder / "variables").is_dir():
        return None
    try:
        return json.loads((folder / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return None  # half-written or foreign: never served


def served_version(base: Path, version: int) -> int:
    """``version``, or the newest complete online export whose chain of parents leads back to it.

    Args:
        base: the model's folder in the repository (``<models>/<name>``).
        version: the pod's own version (its annotation).
    """
    if not base.is_dir():
        return version
    metas = {}
    for entry in base.iterdir():
        if entry.name.isdigit() and int(entry.name) > version:
            meta = _metadata(base, int(entry.name))
            if meta is not None and meta.get("source") == "online":
                metas[int(entry.name)] = meta
    for candidate in sorted(metas, reverse=True):
        v, seen = candidate, set()
        while v in metas and v not in seen:
            seen.add(v)
            parent = metas[v].get("parent_version")
            if parent is None:
                break
            v = int(parent)
        if v == version:
            return candidate
    return version


def model_config_text(model: str, base_path: str, version: int) -> str:
    """A ``ModelServerConfig`` text proto serving exactly ``version`` of ``model``, labelled ``serving``."""
    return (
        "# Rendered by `freshrec rollout model-config` for this pod (freshrec.rollout.model_config).\n"
        "model_config_list {\n"
        "  config {\n"
        f'    name: "{model}"\n'
        f'    base_path: "{base_path}"\n'
        '    model_platform: "tensorflow"\n'
        f"    model_version_policy {{ specific {{ versions: {version} }} }}\n"
        f'    version_labels {{ key: "serving" value: {version} }}\n'
        "  }\n"
        "}\n"
    )


def write_model_config(out: Path, text: str) -> bool:
    """Replace ``out`` atomically when its content changes; True when it was written."""
    try:
        if out.read_text() == text:
            return False
    except OSError:
        pass
    tmp = out.with_name(f".{out.name}.tmp")  # TODO(io): the one atomic-write helper when it lands
    tmp.write_text(text)
    os.chmod(tmp, 0o644)  # TF Serving may run as another user than this sidecar
    os.replace(tmp, out)
    return True


def render(repository: Path, model: str, base_path: str, version: int, out: Path) -> int:
    """Write the pod's model config once; return the version it serves.

    Raises:
        ValueError: ``version`` is not a positive integer (a bad annotation).
    """
    if int(version) < 1:
        raise ValueError(f"model version must be a positive integer, got {version!r}")
    served = served_version(Path(repository) / model, int(version))
    if write_model_config(Path(out), model_config_text(model, base_path, served)):
        log.info("model config: %s v%d (pod version %d) -> %s", model, served, version, out)
    return served


def watch(
    repository: Path, model: str, base_path: str, version: int, out: Path, interval_s: float, stop=None
) -> None:
    """Re-render every ``interval_s`` until ``stop()`` is true (the sidecar's loop)."""
    while stop is None or not stop():
        try:
            render(repository, model, base_path, version, out)
        except OSError as exc:  # a repository briefly unreadable: keep the last config, try again
            log.warning("model config not refreshed: %s", exc)
        time.sleep(interval_s)
