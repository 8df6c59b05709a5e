"""Drift reference profiles: the training frame of each pushed version, and the stable version's copy.

Every batch publish writes ``<references>/<model>/<version>.parquet`` (the frame the version was trained on:
the features the drift monitor compares the event log with, ``--with-features``): the pipeline's push step and
``freshrec train --publish`` (:func:`freshrec.training.run_training`) alike. Whenever a version becomes stable
(the rollout task after promotion, the first version of a repository, ``freshrec models promote``) its frame
is copied to ``stable.parquet`` with ``stable.json`` naming the version, so the drift CronJob always reads one
fixed path and compares with what production was trained on. Versions without a frame (the online learner's
exports) leave the stable reference as it was: they descend from the version whose frame it is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from freshrec.io import atomic_path, atomic_write_json, atomic_write_parquet

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
        return _copy_atomic(Path(frame_path), self.path(version))

    def write_frame(self, version: int, frame: Any) -> Path:
        """Store ``frame`` (a ``pandas.DataFrame``), the training frame of ``version``, atomically."""
        return atomic_write_parquet(frame, self.path(version))

    def promote(self, version: int) -> Path | None:
        """Make ``version``'s frame the stable reference; None (nothing changed) when it has none."""
        source = self.path(version)
        if not source.is_file():
            return None
        _copy_atomic(source, self.stable_path)
        atomic_write_json(self.root / "stable.json", {"version": int(version)})
        return self.stable_path

    def stable_version(self) -> int | None:
        try:
            return int(json.loads((self.root / "stable.json").read_text())["version"])
        except (OSError, ValueError, KeyError):
            return None


def _copy_atomic(source: Path, target: Path) -> Path:
    # freshrec.io's files are 0644: the drift CronJob reads them, maybe as another user
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return target
