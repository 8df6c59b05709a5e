"""The model repository: TF Serving's layout, atomic publishing, and labels in a ModelServerConfig file.

Layout::

    <models_dir>/models.config          TF Serving ModelServerConfig (text proto): labels stable/canary
    <models_dir>/<name>/<version>/      SavedModel (saved_model.pb, variables/) + freshrec.json + Keras weights
    <models_dir>/<name>/.staging-<id>/  a publish in progress (invisible to readers and to TF Serving)

A version is staged completely, then renamed to its number; the number is reserved first with an exclusive
``mkdir`` so two concurrent publishers never take the same one. Readers list only versions that have both
``saved_model.pb`` and a parseable ``freshrec.json`` (written last, inside the staging directory).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from freshrec.io import (
    atomic_write_json,
    atomic_write_text,
    exclusive_lock,
    fsync_dir,
    fsync_tree,
    make_readable,
)

METADATA_FILE = "freshrec.json"
CONFIG_FILE = "models.config"
LABELS = ("stable", "canary")
_RESERVED = ".reserved-"


class RepositoryError(RuntimeError):
    """A repository operation could not be done (unknown version, corrupt config ...)."""


class LabelMoved(RepositoryError):
    """A compare-and-set of a label found it pointing elsewhere than expected (another writer moved it)."""

    def __init__(self, label: str, expected: int | None, current: int | None) -> None:
        super().__init__(f"label {label!r} is at v{current}, not v{expected}: another writer moved it")
        self.label, self.expected, self.current = label, expected, current


_ANY = object()


class ModelRepository:
    """Versions of one model under ``<models_dir>/<name>/`` and their labels in ``models.config``."""

    def __init__(self, models_dir: Path | str, name: str = "ctr") -> None:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"invalid model name {name!r}")
        self.models_dir = Path(models_dir)
        self.name = name
        self.root = self.models_dir / name

    @property
    def config_path(self) -> Path:
        return self.models_dir / CONFIG_FILE

    def path(self, version: int) -> Path:
        return self.root / str(int(version))

    # ----------------------------------------------------------------- versions
    def versions(self) -> list[int]:
        """Servable versions, ascending: complete directories with a SavedModel and readable metadata."""
        if not self.root.is_dir():
            return []
        out = []
        for entry in self.root.iterdir():
            if entry.name.isdigit() and entry.is_dir() and self._complete(entry):
                out.append(int(entry.name))
        return sorted(out)

    @staticmethod
    def _complete(path: Path) -> bool:
        if not (path / "saved_model.pb").is_file() or not (path / "variables").is_dir():
            return False
        try:
            json.loads((path / METADATA_FILE).read_text())
        except (OSError, ValueError):
            return False
        return True

    def latest(self) -> int | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def metadata(self, version: int) -> dict[str, Any]:
        """The ``freshrec.json`` of a version.

        Raises:
            RepositoryError: the version does not exist or is not servable.
        """
        path = self.path(version)
        if not self._complete(path):
            raise RepositoryError(f"model {self.name!r} has no servable version {version} under {self.root}")
        return json.loads((path / METADATA_FILE).read_text())

    def update_metadata(self, version: int, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into a version's ``freshrec.json`` (atomic replace)."""
        meta = self.metadata(version)
        meta.update(fields)
        atomic_write_json(self.path(version) / METADATA_FILE, meta, indent=1)
        return meta

    def publish(
        self, export_dir: Path | str, metadata: dict[str, Any] | None = None, move: bool = False
    ) -> int:
        """Copy (or move) an export into the next version number, atomically; return the version.

        Args:
            export_dir: a directory with a SavedModel (``saved_model.pb``), e.g. from ``export_model``.
            metadata: written as ``freshrec.json`` (``version``, ``name`` and ``created_at`` are added).
            move: rename ``export_dir`` into the staging area instead of copying it (same filesystem).

        Raises:
            ValueError: ``export_dir`` holds no SavedModel.
        """
        export_dir = Path(export_dir)
        if not (export_dir / "saved_model.pb").is_file():
            raise ValueError(f"{export_dir} holds no saved_model.pb; export the model first")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".staging-{uuid.uuid4().hex}"
        try:
            if move:
                export_dir.rename(staging)
            else:
                shutil.copytree(export_dir, staging)
            make_readable(staging)  # the model server may run as another user
            meta = dict(metadata or {})
            meta.setdefault("created_at", dt.datetime.now(dt.UTC).isoformat())
            meta["name"] = self.name
            version = self._reserve()
            try:
                meta["version"] = version
                # freshrec.json last: its presence marks the directory complete.
                atomic_write_json(staging / METADATA_FILE, meta, indent=1)
                fsync_tree(staging)
                os.rename(staging, self.path(version))
            finally:
                with contextlib.suppress(OSError):
                    (self.root / f"{_RESERVED}{version}").rmdir()
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(self.root)
        return version

    def _reserve(self) -> int:
        """Claim the next free version number with an exclusive mkdir (safe across processes)."""
        while True:
            taken = []
            for entry in self.root.iterdir():
                name = entry.name
                if name.startswith(_RESERVED):
                    name = name[len(_RESERVED) :]
                if name.isdigit():
                    taken.append(int(name))
            candidate = max(taken, default=0) + 1
            try:
                os.mkdir(self.root / f"{_RESERVED}{candidate}")
            except FileExistsError:
                continue  # someone else took it between listing and mkdir: look again
            if self.path(candidate).exists():  # a version appeared meanwhile (its reservation already gone)
                (self.root / f"{_RESERVED}{candidate}").rmdir()
                continue
            return candidate

    def delete(self, version: int) -> None:
        """Remove a version that no label points to."""
        holders = [label for label, v in self.labels().items() if v == version]
        if holders:
            raise RepositoryError(f"version {version} is labelled {holders}; move the labels first")
        target = self.path(version)
        if target.exists():
            trash = self.root / f".staging-deleted-{uuid.uuid4().hex}"
            os.rename(target, trash)  # disappear atomically, then clean up
            shutil.rmtree(trash, ignore_errors=True)

    # ------------------------------------------------------------------- labels
    def labels(self) -> dict[str, int]:
        """Label → version for this model, read from ``models.config``."""
        entry = self._find(self._read_config())
        return {k: int(v) for k, v in entry.version_labels.items()} if entry is not None else {}

    def stable(self) -> int | None:
        return self.labels().get("stable")

    def canary(self) -> int | None:
        return self.labels().get("canary")

    def set_label(self, label: str, version: int, *, expect: Any = _ANY) -> None:
        """Point ``label`` at a servable version and rewrite ``models.config`` atomically.

        The read-modify-write holds the repository's lock, so concurrent writers (the rollout task promoting a
        canary, the online learner labelling its export) never lose each other's change. With ``expect``
        (a version, or None for "unlabelled") it is a compare-and-set: the label moves only from there.

        Raises:
            ValueError: unknown label.
            RepositoryError: the version is not servable.
            LabelMoved: ``expect`` given and the label is elsewhere.
        """
        if label not in LABELS:
            raise ValueError(f"unknown label {label!r} (expected one of {LABELS})")
        if int(version) not in self.versions():
            raise RepositoryError(
                f"cannot label {label!r}: model {self.name!r} has no servable version {version}"
            )
        with self._labels_lock():
            labels = self.labels()
            if expect is not _ANY and labels.get(label) != expect:
                raise LabelMoved(label, expect, labels.get(label))
            labels[label] = int(version)
            self._write_labels(labels)

    def remove_label(self, label: str) -> None:
        with self._labels_lock():
            labels = self.labels()
            if labels.pop(label, None) is not None:
                self._write_labels(labels)

    def _labels_lock(self) -> Any:
        return exclusive_lock(self.models_dir / f".{CONFIG_FILE}.lock")

    def _find(self, config: Any) -> Any:
        for entry in config.model_config_list.config:
            if entry.name == self.name:
                return entry
        return None

    def _read_config(self) -> Any:
        from google.protobuf import text_format
        from tensorflow_serving.config import model_server_config_pb2

        config = model_server_config_pb2.ModelServerConfig()
        if self.config_path.is_file():
            try:
                text_format.Parse(self.config_path.read_text(), config)
            except text_format.ParseError as exc:
                raise RepositoryError(f"{self.config_path} is not a valid ModelServerConfig: {exc}") from exc
        return config

    def _write_labels(self, labels: dict[str, int]) -> None:
        from google.protobuf import text_format

        config = self._read_config()
        entry = self._find(config)
        if entry is None:
            entry = config.model_config_list.config.add()
            entry.name = self.name
        # Relative to the config file's folder: a copied or re-mounted repository serves its own versions,
        # never the folder it was written in (the local server resolves it against models_dir; the cluster's
        # TF Serving pods get their own config from freshrec.rollout.model_config).
        entry.base_path = self.name
        entry.model_platform = "tensorflow"
        entry.version_labels.clear()
        for label, version in sorted(labels.items()):
            entry.version_labels[label] = version
        entry.model_version_policy.Clear()
        if labels:
            # TF Serving only accepts labels on versions it loads: load exactly the labelled ones.
            entry.model_version_policy.specific.versions.extend(sorted(set(labels.values())))
        else:
            entry.model_version_policy.latest.num_versions = 1
        atomic_write_text(self.config_path, text_format.MessageToString(config))


def read_model_config(path: Path | str) -> Any:
    """Parse a TF Serving model config file into a ``ModelServerConfig``."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(Path(path).read_text(), config)
    return config
