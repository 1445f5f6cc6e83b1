"""How a process that loads a model is started: the one place that decides what it holds.

Loading a model runs its code (unpickling is code execution, and a scanner can be walked
around), so every model process -- the validation child, a local slot's ``bentoml serve``,
a batch child -- starts as if the model were hostile:

- an explicit minimal environment built from an allow-list (never the platform's
  ``DATABASE_URL``, ``REDIS_URL``, ``DJANGO_SECRET_KEY``, tokens or ``*_FILE`` secrets,
  nor anything the platform adds later: what is not listed here is not passed);
- a working folder of its own as HOME, TMPDIR and working directory;
- where the machine allows it, an unprivileged user (``MODELYARD_MODEL_USER``, default
  ``nobody``) with no capabilities and no way to regain privileges (``setpriv --nnp``), so
  the platform's files (artifacts are stored 0640) are out of its reach;
- on request (the validation child), a network namespace of its own holding only a loopback
  interface that is down: no connection to anything, not even 127.0.0.1; and a PID
  namespace of its own, so nothing it starts outlives it.

Users and namespaces come from util-linux (``setpriv``, ``unshare``), which exec in place:
the PID the caller sees is the model process itself (but for a PID namespace, where
``unshare --fork`` stays as its parent and passes its exit status on), and no
``preexec_fn`` runs in a threaded caller. What it loads must be readable by that user;
folders closed above it are shown through a private mount namespace
(``core.model_reach``). What the machine cannot do (not root and no user namespaces, a
user that does not exist, a file the user cannot reach) is probed at run time and left
out with a note saying why; a model process is never refused because the machine lacks a
feature.

No Django here: the BentoML integration and the sandbox, which are Django-free, use it.
"""

from __future__ import annotations

import functools
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.model_reach import ModelUser, expose_script, exposures

MODEL_USER_ENV = "MODELYARD_MODEL_USER"
DEFAULT_MODEL_USER = "nobody"
# MODELYARD_MODEL_USER=none keeps model processes under the platform's own user.
_NO_USER = {"none", "off", "-"}

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
# Copied from the platform's environment when set: locale, time zone, and what OpenBLAS
# needs on some CPUs/containers to pick a kernel at all.
_INHERITED = ("PATH", "LANG", "LANGUAGE", "TZ", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_INHERITED_PREFIXES = ("LC_",)
# What a starter may add on top (values it computes, never copied from the platform).
_STARTER_VARIABLES = frozenset(
    {
        "BENTOML_HOME",
        "BENTOML_DO_NOT_TRACK",
        "BENTOML_CONFIG_OPTIONS",
        "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE",
        "MODELYARD_SLOT",  # the local backend's mark for finding a slot's processes
        *THREAD_VARIABLES,
    }
)
# A second line behind the allow-list: no name that looks like a secret, however it came in.
SECRET_NAME = re.compile(
    r"TOKEN|SECRET|PASSW|KEY|CREDENTIAL|AUTH|COOKIE|SESSION|PRIVATE|_FILE$|"
    r"^(DATABASE|REDIS|CELERY|BROKER|DJANGO|MODELYARD_(?!SLOT$))|^(AWS|GOOGLE|GCP|AZURE)_",
    re.IGNORECASE,
)
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Confinement:
    """What a model process start applied, and why anything was left out."""

    user: ModelUser | None
    own_network: bool
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "user": self.user.name if self.user else None,
            "uid": self.user.uid if self.user else os.geteuid(),
            "own_network": self.own_network,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class ModelProcessStart:
    """Arguments for ``subprocess.Popen(start.argv, env=start.env, cwd=start.cwd, ...)``."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    confinement: Confinement
    wrapper: list[str] = field(default_factory=list)  # what precedes the caller's argv


def model_environment(
    *, home: Path, extra: Mapping[str, str] | None = None, threads: int | None = None
) -> dict[str, str]:
    """The whole environment of a model process: the allow-list, ``home``, ``extra``.

    ``extra`` may only hold the starter variables above; anything else is a programming
    error (ValueError), so a new variable is a decision made here, not in a starter.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if name in _INHERITED or name.startswith(_INHERITED_PREFIXES)
    }
    env.setdefault("PATH", _DEFAULT_PATH)
    env.setdefault("LANG", "C.UTF-8")
    env["HOME"] = str(home)
    env["TMPDIR"] = str(home)
    if threads is not None:
        # Parallelism comes from processes; a BLAS/OpenMP pool per process on top
        # oversubscribes the cores, and one thread keeps memory predictable under RLIMIT_AS.
        env.update({name: str(int(threads)) for name in THREAD_VARIABLES})
    for name, value in (extra or {}).items():
        if name not in _STARTER_VARIABLES:
            raise ValueError(f"{name} is not a variable a model process may be given")
        env[name] = value
    leaked = sorted(name for name in env if SECRET_NAME.search(name))
    if leaked:
        raise ValueError(f"model process environment would hold {', '.join(leaked)}")
    return env


def model_process_start(
    *,
    argv: Sequence[str],
    home: Path,
    extra_env: Mapping[str, str] | None = None,
    threads: int | None = None,
    own_network: bool = False,
    reads: Iterable[Path] = (),
    passes: Iterable[Path] = (),
) -> ModelProcessStart:
    """Prepare ``home`` (the process's own folder) and wrap ``argv`` in its confinement.

    ``reads`` are the files and folders the process loads: it runs as the model user only
    if that user can reach and read all of them (and ``home``, the interpreter and its
    environment), else as the platform's user with a note. ``own_network`` asks for an
    empty network namespace. ``passes`` are folders it only needs to pass through, to
    files the caller grants it later (:func:`grant_read`, :func:`grant_write_folder`).
    """
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    notes: list[str] = []
    user = model_user(notes)
    exposed: list[tuple[Path, Path]] = []
    if user is not None:
        os.chown(home, user.uid, user.gid)
        # The interpreter and its environment (a venv's site-packages) are loaded too.
        needed = [home, *reads, Path(argv[0]), Path(sys.prefix), Path(sys.base_prefix)]
        wanted = [*((path, True) for path in needed), *((path, False) for path in passes)]
        exposed, unreadable = exposures(wanted, user)
        if unreadable:
            notes.append(
                f"model user {user.name} (uid {user.uid}) cannot read {', '.join(unreadable)}:"
                " running as the platform's user"
            )
            user, exposed = None, []
    script = expose_script(exposed)
    if exposed and not script:
        notes.append("no user switch: no place outside the closed folders to stage mounts")
        user = None
    wrapper, applied = _wrapper(user, own_network, script, notes)
    if user is None or not applied["user"]:
        os.chown(home, os.geteuid(), os.getegid())
        user = None
    return ModelProcessStart(
        argv=[*wrapper, *argv],
        env=model_environment(home=home, extra=extra_env, threads=threads),
        cwd=home,
        confinement=Confinement(user=user, own_network=applied["network"], notes=tuple(notes)),
        wrapper=wrapper,
    )


def model_user(notes: list[str] | None = None) -> ModelUser | None:
    """The unprivileged user model processes run as, or None (with a note) if there is none."""
    notes = notes if notes is not None else []
    wanted = os.environ.get(MODEL_USER_ENV, "").strip() or DEFAULT_MODEL_USER
    if wanted.lower() in _NO_USER:
        notes.append(f"{MODEL_USER_ENV}={wanted}: model processes run as the platform's user")
        return None
    if os.geteuid() != 0:
        notes.append(
            f"the platform runs as uid {os.geteuid()}, not root: it cannot switch model "
            "processes to another user"
        )
        return None
    try:
        entry = pwd.getpwuid(int(wanted)) if wanted.isdigit() else pwd.getpwnam(wanted)
    except (KeyError, ValueError):
        notes.append(f"model user {wanted!r} does not exist on this machine")
        return None
    if entry.pw_uid == 0:
        notes.append(f"model user {wanted!r} is root: refused, model processes run unswitched")
        return None
    return ModelUser(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)


@dataclass(frozen=True)
class Grant:
    """A read grant on one file; :meth:`revoke` puts its group and mode back."""

    path: Path | None = None
    gid: int = -1
    mode: int = 0

    def revoke(self) -> None:
        if self.path is None:
            return
        try:
            os.chown(self.path, -1, self.gid)
            os.chmod(self.path, self.mode)
        except FileNotFoundError:
            pass  # already consumed and removed


def grant_read(path: Path, confinement: Confinement) -> Grant:
    """Let the model user read one file the platform made for it (group read, its group).

    The owner stays the platform's user, so the model process cannot change or replace it.
    """
    if confinement.user is None:
        return Grant()
    info = os.stat(path)
    os.chown(path, -1, confinement.user.gid)
    os.chmod(path, (info.st_mode & 0o7777) | stat.S_IRGRP)
    return Grant(Path(path), info.st_gid, info.st_mode & 0o7777)


def grant_write_folder(path: Path, confinement: Confinement) -> None:
    """Let the model user create files in a platform folder (group rwx, sticky).

    Sticky: it can only rename or delete the files it created itself.
    """
    if confinement.user is None:
        return
    os.chown(path, -1, confinement.user.gid)
    os.chmod(path, (os.stat(path).st_mode & 0o7777) | stat.S_IRWXG | stat.S_ISVTX)  # noqa: S103 - group: the model user only


def reclaim(path: Path, mode: int = 0o640) -> None:
    """Take a file a model process wrote back into the platform's ownership."""
    if os.geteuid() == 0:
        os.chown(path, os.geteuid(), os.getegid())
    os.chmod(path, mode)


def _wrapper(
    user: ModelUser | None, own_network: bool, expose: list[str], notes: list[str]
) -> tuple[list[str], dict[str, bool]]:
    """The util-linux prefix for what was asked and what this machine can do."""
    namespaces: list[str] = []
    if own_network:
        namespaces, why = _network_prefix()
        if why:
            notes.append(why)
    switch: list[str] = []
    if user is not None:
        switch, why = _user_prefix(user.uid, user.gid)
        if why:
            notes.append(why)
    if switch and expose:
        mount = _mount_prefix()
        if not mount:
            notes.append(
                "no user switch: what it loads is only reachable in a mount namespace, "
                "which this machine refuses"
            )
            switch, expose = [], []
        elif namespaces:
            namespaces = [namespaces[0], "--mount", *namespaces[1:]]
        else:
            namespaces = mount
    else:
        expose = []
    if switch and not _works((*namespaces, *expose, *switch)):
        # Each works alone but not together (e.g. a user namespace the uid is not mapped in).
        notes.append("no user switch inside the process's namespaces on this machine")
        switch, expose = [], []
        if namespaces and "--mount" in namespaces:
            namespaces = [part for part in namespaces if part != "--mount"]
            if namespaces == [namespaces[0], "--"]:
                namespaces = []
    return [*namespaces, *expose, *switch], {
        "network": "--net" in namespaces,
        "user": bool(switch),
    }


@functools.cache
def _mount_prefix() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        return []
    prefix = [unshare, "--mount", "--"]
    return prefix if _works(tuple(prefix)) else []


@functools.cache
def _network_prefix() -> tuple[list[str], str]:
    unshare = shutil.which("unshare")
    if unshare is None:
        return [], "no own network: util-linux unshare is not installed"
    if os.geteuid() == 0:
        prefix = [unshare, "--net", "--"]
    else:
        # A user namespace grants the right to create the network namespace without root.
        prefix = [unshare, "--user", "--map-current-user", "--net", "--"]
    # Also a PID namespace of its own, whose first process is the model process: when it
    # ends, the kernel kills every process it left behind, also those that left its session
    # (setsid, double fork), which the caller's kill of the process tree no longer reaches
    # once they are orphaned. unshare then stays as the parent and passes on the model
    # process's exit status or signal.
    with_pids = [*prefix[:-1], "--pid", "--fork", "--kill-child", "--"]
    if _works(tuple(with_pids)):
        return with_pids, ""
    if not _works(tuple(prefix)):
        how = "as root" if os.geteuid() == 0 else "with user namespaces"
        return [], f"no own network: unshare --net failed {how} on this machine"
    return prefix, "no own PID namespace: processes a model leaves behind may outlive it"


@functools.cache
def _user_prefix(uid: int, gid: int) -> tuple[list[str], str]:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return [], "no user switch: util-linux setpriv is not installed"
    base = [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--nnp"]
    # Also empty the capability bounding set where the machine lets us.
    for prefix in (
        [*base, "--inh-caps=-all", "--bounding-set=-all", "--"],
        [*base, "--"],
    ):
        if _works(tuple(prefix)):
            return prefix, ""
    return [], f"no user switch: setpriv to uid {uid} failed on this machine"


def _works(prefix: tuple[str, ...]) -> bool:
    true = shutil.which("true") or "/bin/true"
    try:
        result = subprocess.run(
            [*prefix, true],
            env={"PATH": _DEFAULT_PATH},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0
