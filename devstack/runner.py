"""The Procfile's processes for `make run`: prefixed output, and a shutdown in order.

Honcho signalled every process at once and SIGKILLed what had not exited 5 s later (the web
server mid graceful stop, a worker finishing a task). Here each process runs in a session of
its own (the terminal's Ctrl-C reaches only devstack, which then decides the order), and
``stop`` gives each its SIGTERM (the main process only) and the group ``grace`` seconds before
SIGKILL. Slot servers and
the embedded Redis and PostgreSQL are stopped by the caller after these (devstack/__main__.py),
because every process here needs them until it has exited.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from honcho.environ import parse_procfile


@dataclass
class Proc:
    name: str
    command: str
    popen: subprocess.Popen[bytes] | None = None
    threads: list[threading.Thread] = field(default_factory=list)


def say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} devstack | {message}", flush=True)


class ProcessGroup:
    def __init__(self, procfile: Path, *, env: dict[str, str], cwd: Path) -> None:
        self.procs = [
            Proc(name, command)
            for name, command in parse_procfile(procfile.read_text()).processes.items()
        ]
        self.env, self.cwd = env, cwd
        self.width = max(len(p.name) for p in self.procs)
        self.stopping = False

    def start(self) -> None:
        for proc in self.procs:
            proc.popen = subprocess.Popen(
                ["/bin/sh", "-c", proc.command],
                cwd=self.cwd,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
            thread.start()
            proc.threads.append(thread)
            say(f"started {proc.name} (pid {proc.popen.pid})")

    def _pump(self, proc: Proc) -> None:
        assert proc.popen is not None and proc.popen.stdout is not None
        prefix = f"{time.strftime('%H:%M:%S')} {proc.name:<{self.width}} | "
        for raw in iter(proc.popen.stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            prefix = f"{time.strftime('%H:%M:%S')} {proc.name:<{self.width}} | "
            sys.stdout.write(prefix + line + "\n")
            sys.stdout.flush()

    def wait_any(self) -> tuple[Proc, int]:
        """Block until a process exits by itself; return it and its exit code."""
        while True:
            for proc in self.procs:
                if proc.popen is not None and (code := proc.popen.poll()) is not None:
                    return proc, code
            time.sleep(0.2)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM every process group, SIGKILL the groups still alive after ``grace``."""
        self.stopping = True
        running = [
            (p, p.popen) for p in self.procs if p.popen is not None and _group_alive(p.popen.pid)
        ]
        if not running:
            return
        say(f"stopping {', '.join(p.name for p, _ in running)}")
        for _, popen in running:
            _terminate(popen.pid)
        deadline = time.monotonic() + grace
        pending = list(running)
        while pending and time.monotonic() < deadline:
            for proc, popen in list(pending):
                popen.poll()
                if not _group_alive(popen.pid):
                    pending.remove((proc, popen))
                    say(f"{proc.name} stopped")
            time.sleep(0.25)
        for proc, popen in pending:
            say(f"{proc.name} did not stop within {grace:.0f} s; SIGKILL")
            _signal_group(popen.pid, signal.SIGKILL)
        for proc, popen in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(5)
            for thread in proc.threads:
                thread.join(2)


SHELLS = {"sh", "dash", "bash"}


def _terminate(pid: int) -> None:
    """SIGTERM the process a Procfile line runs, never its helpers: gunicorn's and celery's
    own processes stop their workers in order (SIGTERM to a pool process is a lost task).
    A restart loop (``while true; do ...``) is a shell: it and its current command get it."""
    import psutil

    try:
        top = psutil.Process(pid)
        targets = [top, *top.children()] if top.name() in SHELLS else [top]
    except psutil.NoSuchProcess:
        return
    for proc in targets:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group (our session) is left, zombies not counted."""
    import psutil

    for proc in psutil.process_iter(["pid", "status"]):
        with contextlib.suppress(psutil.Error, OSError):
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                return True
    return False
