"""Drift reference profiles: the training frame of each pushed version, and the stable version's copy.

The pipeline's push step writes ``<references>/<model>/<version>.parquet`` (the frame the version was
trained on: the features the drift monitor compares the event log with, ``--with-features``). Whenever a
version becomes stable (the rollout task, after promotion) its frame is copied to ``stable.parquet`` with
``stable.json`` naming the version, so the drift CronJob always reads one fixed path and compares with
what production was trained on.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

STABLE = "stable.parquet"


class ReferenceStore:
    """``<references_dir>/<model>/``: one Parquet file per pushed version, and the stable one's copy."""

    def __init__(self, references_dir: Path | str, model: str) -> None:
        self.root = Path(references_dir) / model

    def path(self, version: int) -> Path:
        return self.root / f"{int(version)}.parquet"

    @property
    def stable_path(self) -> Path:
        return self.root / STABLE

    def write(self, version: int, frame_path: Path | str) -> Path:
        """Store the training frame of ``version`` (a Parquet file) atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        return _copy_atomic(Path(frame_path), self.path(version))

    def promote(self, version: int) -> Path | None:
        """Make ``version``'s frame the stable reference; None (nothing changed) when it has none."""
        source = self.path(version)
        if not source.is_file():
            return None
        _copy_atomic(source, self.stable_path)
        marker = self.root / "stable.json"
        tmp = marker.with_name(".stable.json.tmp")  # TODO(io): the one atomic-write helper when it lands
        tmp.write_text(json.dumps({"version": int(version)}))
        os.replace(tmp, marker)
        return self.stable_path

    def stable_version(self) -> int | None:
        try:
            return int(json.loads((self.root / "stable.json").read_text())["version"])
        except (OSError, ValueError, KeyError):
            return None


def _copy_atomic(source: Path, target: Path) -> Path:
    tmp = target.with_name(f".{target.name}.tmp")  # TODO(io): the one atomic-write helper when it lands
    shutil.copyfile(source, tmp)
    os.chmod(tmp, 0o644)  # read by the drift CronJob, maybe as another user
    os.replace(tmp, target)
    return target
