"""Small JSON state files shared by processes: read, change and write back under an exclusive lock."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from freshrec.io import atomic_write_text, exclusive_lock

M = TypeVar("M", bound=BaseModel)


@contextlib.contextmanager
def locked_state(directory: Path, model: type[M]) -> Iterator[M]:
    """Yield ``<directory>/state.json`` as ``model`` (a fresh one if absent); save it atomically on exit.

    Several checks or triggers may run at once: the whole read-modify-write holds ``state.lock``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "state.json"
    with exclusive_lock(directory / "state.lock"):
        state = model.model_validate_json(path.read_text()) if path.exists() else model()
        yield state
        atomic_write_text(path, state.model_dump_json(indent=2))
