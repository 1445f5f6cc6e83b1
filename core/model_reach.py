"""What the model user can reach, and how to show it what it must load.

Part of ``core.model_process``: a model process runs as an unprivileged user, which needs
to read its interpreter, its environment and its own files. Where a folder above them is
closed to it (on this machine the interpreter lives under /root/.pyenv, /root being 0700;
pytest's folders are 0700 too), the process gets a private mount namespace in which that
folder is an empty tmpfs holding only the path down to what it needs.
"""

from __future__ import annotations

import atexit
import functools
import os
import shlex
import shutil
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelUser:
    name: str
    uid: int
    gid: int


def user_can_read(
    path: Path, user: ModelUser, *, opened: Path | None = None, read: bool = True
) -> bool:
    """Whether ``user`` (with only its primary group) can reach and read ``path`` (only
    reach it, and pass through it if a folder, with ``read=False``).

    From the mode bits of the path and every folder above it (ACLs are not consulted);
    ``opened`` and the folders above it count as open (see :func:`_exposures`).
    """
    try:
        target = Path(path).resolve(strict=True)
    except OSError:
        return False
    for folder in reversed(target.parents):
        if opened is not None and (folder == opened or folder in opened.parents):
            continue
        if not _allowed(folder, user, stat.S_IXUSR):
            return False
    want = (stat.S_IRUSR if read else 0) | (stat.S_IXUSR if target.is_dir() else 0)
    return _allowed(target, user, want)


def _allowed(path: Path, user: ModelUser, owner_bits: int) -> bool:
    info = path.stat()
    if info.st_uid == user.uid:
        bits = owner_bits
    elif info.st_gid == user.gid:
        bits = owner_bits >> 3
    else:
        bits = owner_bits >> 6
    return info.st_mode & bits == bits


def exposures(
    paths: Iterable[tuple[Path, bool]], user: ModelUser
) -> tuple[list[tuple[Path, Path]], list[str]]:
    """What to show the model user through a private mount namespace, and what it still
    could not read.

    A path it cannot reach only because folders above it are closed (the interpreter under
    /root/.pyenv, /root being 0700) is reachable in a mount namespace where the topmost
    closed folder is an empty tmpfs holding only the path down to the needed entry (the
    child of the deepest closed folder), bound back in: (topmost closed, entry) pairs. The
    rest of the closed folders stays hidden. Only as root.
    """
    exposed: dict[Path, Path] = {}
    unreadable: list[str] = []
    for path, read in paths:
        if user_can_read(path, user, read=read):
            continue
        try:
            target = Path(path).resolve(strict=True)
        except OSError:
            unreadable.append(str(path))
            continue
        closed = [d for d in reversed(target.parents) if not _allowed(d, user, stat.S_IXUSR)]
        if not closed or closed[0] == Path("/") or os.geteuid() != 0:
            unreadable.append(str(path))
            continue
        entry = closed[-1] / target.relative_to(closed[-1]).parts[0]
        if not user_can_read(target, user, opened=closed[-1], read=read):
            unreadable.append(str(path))
            continue
        exposed[entry] = closed[0]
    # An entry inside another one is reachable through it (its real folders).
    kept = {
        entry: top
        for entry, top in exposed.items()
        if not any(other in entry.parents for other in exposed)
    }
    return [(top, entry) for entry, top in sorted(kept.items())], unreadable


@functools.cache
def _stage_root() -> Path:
    """Empty mount points for the exposures, one folder per platform process.

    Outside every closed folder (the tmpfs would hide them), and only ever mounted on inside
    the model processes' own mount namespaces, so every start can reuse them.
    """
    root = Path(tempfile.mkdtemp(prefix="modelyard-model-mounts-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def expose_script(exposed: list[tuple[Path, Path]]) -> list[str]:
    """``sh -c`` that mounts the exposures (in the caller's new mount namespace) and execs
    the rest of the command line; [] when there is nothing to expose (or no place to stage
    them)."""
    if not exposed:
        return []
    root = _stage_root()
    tops = sorted({top for top, _entry in exposed})
    if any(top == root or top in root.parents for top in tops):
        return []
    binds, mounts, moves = [], [], []
    for index, (_top, entry) in enumerate(exposed):
        stage = root / str(index)
        if entry.is_dir():
            stage.mkdir(exist_ok=True)
        else:
            stage.touch(exist_ok=True)
        stage_q, entry_q = shlex.quote(str(stage)), shlex.quote(str(entry))
        binds.append(f"mount --bind {entry_q} {stage_q}")
        parent = shlex.quote(str(entry.parent))
        make = f"mkdir {entry_q}" if entry.is_dir() else f"touch {entry_q}"
        moves.append(f"mkdir -p {parent}; {make}; mount --move {stage_q} {entry_q}")
    for top in tops:
        mounts.append(
            "mount -t tmpfs -o mode=0755,size=64k,nosuid,nodev modelyard-hidden "
            + shlex.quote(str(top))
        )
    script = "; ".join(["set -e", "umask 022", *binds, *mounts, *moves, 'exec "$@"'])
    return ["/bin/sh", "-c", script, "modelyard-model-process"]
