"""Inside one container of a rehearsal pod: build its filesystem view, drop privileges, exec its command.

Run by the pod runner as ``nsenter --net=<pod netns> unshare --mount --propagation private python -m
freshrec.cluster.rehearsal_sandbox SPEC.json`` (root, in a new private mount namespace, so nothing here is
seen by this machine). Steps, as a container runtime does them:

1. a tmpfs becomes the container root; every top-level directory of this machine (the stand-in for the
   image's filesystem) appears in it through an overlay, so the mount points the pod needs can be
   created without touching this machine; ``/proc``, ``/sys``, ``/dev`` are bound; ``/run`` and ``/tmp``
   start empty;
2. the image's own files (the Dockerfile's COPY'd folders, small executables it ships) are bound or
   written in; ``/etc/hosts`` and ``/etc/resolv.conf`` are the pod's;
3. each volumeMount is bound at its mountPath (``readOnly`` honoured); with ``readOnlyRootFilesystem`` the
   root and the overlays are remounted read-only afterwards (volumes stay as mounted);
4. ``chroot``, ``chdir`` to the working directory, set groups/gid/uid, ``exec`` the command with the
   container's environment (``PATH`` searched in that environment).

Only the standard library: this runs before the command and must start fast.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

SKIP_TOP = {"proc", "sys", "dev", "run", "tmp", "mnt", "lost+found", "media", "boot", "old_root", "srv"}


def _mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"rehearsal sandbox: mount {' '.join(args)}: {proc.stderr.strip()}")


def inside(root: Path, path: str) -> Path:
    """``path`` (absolute, as the container sees it) resolved inside ``root``, following symlinks there."""
    current = root
    parts = [p for p in path.split("/") if p]
    for _ in range(64):
        if not parts:
            return current
        part = parts.pop(0)
        if part == "..":
            current = current.parent if current != root else root
            continue
        nxt = current / part
        if nxt.is_symlink():
            target = os.readlink(nxt)
            if target.startswith("/"):
                current = root
            parts = [p for p in target.split("/") if p] + parts
            continue
        current = nxt
    raise SystemExit(f"rehearsal sandbox: too many symlinks resolving {path}")


def _mkdirs(root: Path, path: str, is_file: bool) -> Path:
    target = inside(root, path)
    if is_file:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.touch()
    else:
        target.mkdir(parents=True, exist_ok=True)
    return target


def build(spec: dict) -> None:
    root = Path(spec["root"])
    upper, work = Path(spec["upper"]), Path(spec["work"])
    root.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", "mode=755", "rehearsal-root", str(root))
    overlays = []
    for entry in sorted(os.listdir("/")):
        host = Path("/") / entry
        if entry in SKIP_TOP:
            continue
        if host.is_symlink():
            os.symlink(os.readlink(host), root / entry)
        elif host.is_dir():
            (upper / entry).mkdir(parents=True, exist_ok=True)
            (work / entry).mkdir(parents=True, exist_ok=True)
            overlays.append(entry)
    # The image's extra executables go into the upper layers before the overlays are mounted.
    for path, content, mode in spec.get("shims", []):
        top, _, rest = path.strip("/").partition("/")
        dest = upper / top / rest
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(content)
        dest.chmod(mode)
    for entry in overlays:
        (root / entry).mkdir()
        _mount(
            "-t", "overlay", "overlay", "-o",
            f"lowerdir=/{entry},upperdir={upper / entry},workdir={work / entry}",
            str(root / entry),
        )  # fmt: skip
    for entry in ("proc", "sys", "dev"):
        (root / entry).mkdir()
        _mount("--rbind", f"/{entry}", str(root / entry))
    for entry in ("run", "tmp", "mnt"):
        (root / entry).mkdir(mode=0o1777 if entry == "tmp" else 0o755)
        (root / entry).chmod(0o1777 if entry == "tmp" else 0o755)
    # Directories on the way to the interpreter must be traversable for the container's user (they are in
    # the image; on this machine the interpreter may sit under a root-only home).
    for path in spec.get("traversable", []):
        target = inside(root, path)
        if target.is_dir():
            target.chmod(target.stat().st_mode | stat.S_IXOTH | stat.S_IXGRP)
    for src, dest, is_file in spec.get("image_files", []):
        target = _mkdirs(root, dest, is_file)
        _mount("--bind", src, str(target))
        _mount("-o", "remount,bind,ro", str(target))
    for path, mode, owner in spec.get("make_dirs", []):
        target = _mkdirs(root, path, False)
        target.chmod(mode)
        os.chown(target, owner, 0)
    for src, dest, readonly, is_file in spec.get("mounts", []):
        target = _mkdirs(root, dest, is_file)
        _mount("--bind", src, str(target))
        if readonly:
            _mount("-o", "remount,bind,ro", str(target))
    for name in ("hosts", "resolv.conf", "hostname"):
        src = spec.get("etc", {}).get(name)
        if src:
            _mount("--bind", src, str(_mkdirs(root, f"/etc/{name}", True)))
    if spec.get("readonly_root"):
        for entry in overlays:
            _mount("-o", "remount,ro", str(root / entry))
        _mount("-o", "remount,ro", str(root))


def main(argv: list[str]) -> None:
    spec = json.loads(Path(argv[1]).read_text())
    build(spec)
    os.chroot(spec["root"])
    os.chdir(spec.get("workdir") or "/")
    uid, gid = spec.get("uid"), spec.get("gid")
    if uid is not None:
        os.setgroups(list(spec.get("groups") or []))
        os.setresgid(gid or 0, gid or 0, gid or 0)
        os.setresuid(uid, uid, uid)
    env = spec["env"]
    argv_ = spec["argv"]
    try:
        os.execvpe(argv_[0], argv_, env)
    except OSError as exc:
        # What a runtime reports for a command it cannot start (exit 127/126 as a shell would).
        sys.stderr.write(f"exec {argv_[0]!r} failed: {exc.strerror} (PATH={env.get('PATH', '')})\n")
        sys.exit(127 if isinstance(exc, FileNotFoundError) else 126)


if __name__ == "__main__":
    main(sys.argv)
