"""Atomic file and directory writes: the one helper every writer in freshrec uses.

A reader (TF Serving, the gateway, a pipeline step, another process of the loop) never sees half a file:
content goes to a temporary name in the destination's own directory (same file system, so the final
``rename`` is atomic), is flushed and ``fsync``-ed, and only then renamed into place; the directory entry is
``fsync``-ed too, so the rename survives a crash. A failed write removes its temporary and leaves the previous
file untouched.

Modes are those of ordinary files, not of ``tempfile``: files are created ``0644`` and directories ``0755``
(both subject to the process umask), because the files published here are read by other users — the model
server runs under its own UID, and ``mkstemp``'s ``0600`` / ``mkdtemp``'s ``0700`` would lock it out.

Temporary names start with a dot and contain ``.tmp``, so directory scanners (the event log, the model
repository, the source that tails a folder) skip them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FILE_MODE = 0o644
DIR_MODE = 0o755

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "atomic_directory",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_parquet",
    "atomic_write_text",
    "exclusive_lock",
    "fsync_dir",
    "fsync_tree",
    "make_readable",
    "publish_file",
    "publish_files",
    "staging_dir",
    "temp_name",
    "umask",
]


def _make_dir(path: Path) -> None:
    os.mkdir(path, DIR_MODE)


def _ensure_parent(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)


def temp_name(path: Path, suffix: str = "") -> Path:
    """A unique hidden name beside ``path`` (same directory, so a rename onto ``path`` is atomic).

    ``suffix`` is appended for writers that choose the format by extension (the kfp compiler).
    """
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{suffix}")


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` durable (a rename is only safe after this)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """``fsync`` every file and directory under ``root`` (before renaming the tree into place)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            if not p.is_symlink():
                _fsync_file(p)
        fsync_dir(Path(dirpath))


@contextlib.contextmanager
def atomic_path(path: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; on success it replaces ``path``.

    For writers that want a file name rather than a handle (``pyarrow``, ``pandas``, the kfp compiler,
    Evidently's HTML export). The temporary file already exists, created with :data:`FILE_MODE`, so a writer
    that opens it for writing keeps that mode. On an exception the temporary is removed and ``path`` is left
    as it was. ``suffix`` ends the temporary's name (e.g. ``".yaml"``).
    """
    path = Path(path)
    _ensure_parent(path)
    tmp = temp_name(path, suffix)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return path


def atomic_write_text(path: Path | str, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: Path | str, obj: Any, *, indent: int | None = 2, default: Any = str) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (``default=str`` turns dates and paths into text)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=default))


def atomic_write_parquet(table: Any, path: Path | str) -> Path:
    """Write a ``pandas.DataFrame`` (its index dropped) or a ``pyarrow.Table`` as Parquet, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


@contextlib.contextmanager
def staging_dir(parent: Path | str, prefix: str = "staging") -> Iterator[Path]:
    """A scratch directory inside ``parent`` (mode :data:`DIR_MODE`), removed on exit.

    Use it where the result is moved out of it (e.g. an export then published into the model repository by
    rename): unlike ``tempfile.TemporaryDirectory`` it is on the destination's file system and readable by
    others.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    tmp = parent / f".{prefix}-{uuid.uuid4().hex[:12]}.tmp"
    _make_dir(tmp)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(path: Path | str, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary directory to fill; on success it is ``fsync``-ed and renamed to ``path``.

    Args:
        path: the directory to publish. It must not exist, or be empty, unless ``replace``.
        replace: swap out an existing ``path`` (the old tree is renamed aside, then deleted: readers see the
            old or the new tree, never a mixture; for a moment there is no ``path`` at all).

    Raises:
        FileExistsError: ``path`` exists, is not empty and ``replace`` is false (checked before and after
            the directory is filled).
    """
    path = Path(path)

    def _blocked() -> bool:
        return not replace and path.exists() and (not path.is_dir() or any(path.iterdir()))

    if _blocked():
        raise FileExistsError(f"{path} already exists and is not empty")
    _ensure_parent(path)
    tmp = temp_name(path)
    _make_dir(tmp)
    try:
        yield tmp
        fsync_tree(tmp)
        if _blocked():
            raise FileExistsError(f"{path} appeared while it was being written")
        old = None
        if path.exists():
            if replace:
                old = temp_name(path)
                os.rename(path, old)
            else:
                path.rmdir()  # empty (checked above)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def umask() -> int:
    """The process umask, read without changing it (Linux ``/proc``; elsewhere set and restored)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # pragma: no cover - not Linux
    os.umask(mask)  # pragma: no cover
    return mask  # pragma: no cover


def make_readable(root: Path | str) -> None:
    """Give a tree ordinary modes: directories :data:`DIR_MODE`, files :data:`FILE_MODE` (minus the umask).

    For trees made by other code (``tempfile.mkdtemp`` gives ``0700``, ``mkstemp`` ``0600``) that are about to
    be published for another user to read, e.g. a SavedModel handed to the model repository.
    """
    mask = umask()
    root = Path(root)
    os.chmod(root, DIR_MODE & ~mask)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            os.chmod(Path(dirpath) / name, DIR_MODE & ~mask)
        for name in filenames:
            p = Path(dirpath) / name
            if not p.is_symlink():
                os.chmod(p, FILE_MODE & ~mask)


def publish_file(src: Path | str, dst: Path | str) -> Path:
    """Move a finished file ``src`` (already on ``dst``'s file system) onto ``dst`` durably.

    For writers that stage many files at once (the event log's part files) and move each into place.
    """
    src, dst = Path(src), Path(dst)
    _fsync_file(src)
    _ensure_parent(dst)
    os.replace(src, dst)
    fsync_dir(dst.parent)
    return dst


def publish_files(moves: list[tuple[Path, Path]], *, threads: int = 8) -> list[Path]:
    """:func:`publish_file` for many files at once, with the same guarantee for each.

    Every source is ``fsync``-ed before any rename, then each is renamed onto its destination, then every
    destination directory (and the parent of a directory created here) is ``fsync``-ed. The ``fsync`` calls
    run on a thread pool: the file system commits concurrent ones together, which for the event log's
    one-file-per-date appends is an order of magnitude faster than one after another.
    """
    if not moves:
        return []
    pairs = [(Path(a), Path(b)) for a, b in moves]
    dirs: dict[Path, None] = {}
    for _, dst in pairs:
        if not dst.parent.is_dir():
            _ensure_parent(dst)
            dirs[dst.parent.parent] = None  # the new directory's own entry
        dirs[dst.parent] = None
    pool = _sync_pool(threads)
    list(pool.map(_fsync_file, [src for src, _ in pairs]))
    for src, dst in pairs:
        os.replace(src, dst)
    list(pool.map(fsync_dir, list(dirs)))
    return [dst for _, dst in pairs]


_SYNC_POOLS: dict[tuple[int, int], Any] = {}
_SYNC_POOLS_LOCK = threading.Lock()


def _sync_pool(threads: int) -> Any:  # -> ThreadPoolExecutor
    """One pool per size and process (kept: starting threads per append costs more than the fsyncs); a
    forked child, which has none of its parent's threads, gets its own."""
    from concurrent.futures import ThreadPoolExecutor

    key = (os.getpid(), threads)
    with _SYNC_POOLS_LOCK:
        pool = _SYNC_POOLS.get(key)
        if pool is None:
            pool = _SYNC_POOLS[key] = ThreadPoolExecutor(max(1, threads), thread_name_prefix="fsync")
        return pool


@contextlib.contextmanager
def exclusive_lock(path: Path | str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if absent) for a read-modify-write across processes."""
    path = Path(path)
    _ensure_parent(path)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
