"""The Procfile's processes for `make run`: prefixed output, supervision, a shutdown in order.

Each process runs in a session of its own (the terminal's Ctrl-C reaches only devstack, which
then decides the order). A process that exits by itself is restarted with backoff, as
compose's restart policy or Kubernetes would, and the rest keep running: its exit (code or
signal) and the restart are printed. Only ``stop`` (Ctrl-C or SIGTERM on devstack) ends them:
each gets its SIGTERM (the main process only) and the group ``grace`` seconds before SIGKILL.
Slot servers and the embedded Redis and PostgreSQL are stopped by the caller after these
(devstack/__main__.py), because every process here needs them until it has exited.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from honcho.environ import parse_procfile


@dataclass
class Backoff:
    """When to try again after the ``failures``-th exit in a row: 0.5 s, 1 s, 2 s … ``cap``.

    The first restart is quick (a gateway down for seconds is requests failing); a process
    that stayed up ``healthy_after`` seconds starts the count again, so one crash a day never
    reaches the cap, while a crash loop does not spin.
    """

    first: float = 0.5
    cap: float = 30.0
    healthy_after: float = 30.0
    failures: int = 0
    started_at: float = 0.0

    def started(self) -> None:
        self.started_at = time.monotonic()

    def exited(self) -> float:
        if time.monotonic() - self.started_at >= self.healthy_after:
            self.failures = 0
        self.failures += 1
        delay: float = min(self.first * 2 ** (self.failures - 1), self.cap)
        return delay


@dataclass
class Proc:
    name: str
    command: str
    popen: subprocess.Popen[bytes] | None = None
    threads: list[threading.Thread] = field(default_factory=list)
    backoff: Backoff = field(default_factory=Backoff)
    restart_at: float | None = None
    restarts: int = 0


def say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} devstack | {message}", flush=True)


def exit_description(code: int) -> str:
    """``exit code 1`` or ``signal SIGKILL``: a negative code is Popen's killed-by-signal."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"exit code {code}"


class ProcessGroup:
    def __init__(
        self,
        procfile: Path,
        *,
        env: dict[str, str],
        cwd: Path,
        sockets: dict[str, tuple[str, socket.socket]] | None = None,
    ) -> None:
        """``sockets`` maps a process name to (variable, listening socket): every start of
        that process inherits the socket, its fd number in the variable. The socket stays
        open here across the process's restarts, so its clients queue instead of being
        refused while it is down; :meth:`stop` closes it."""
        self.sockets = sockets or {}
        self.procs = [
            Proc(name, command)
            for name, command in parse_procfile(procfile.read_text()).processes.items()
        ]
        self.env, self.cwd = env, cwd
        self.width = max(len(p.name) for p in self.procs)
        self.stopping = False

    def start(self) -> None:
        for proc in self.procs:
            self._spawn(proc)

    def _spawn(self, proc: Proc) -> None:
        # `exec`: the Popen is the process itself, so its exit code or signal is the one
        # reported (not the shell's 128+n) and SIGTERM reaches it directly.
        env = self.env
        pass_fds: tuple[int, ...] = ()
        if proc.name in self.sockets:
            variable, sock = self.sockets[proc.name]
            env, pass_fds = {**env, variable: str(sock.fileno())}, (sock.fileno(),)
        proc.popen = subprocess.Popen(
            ["/bin/sh", "-c", f"exec {proc.command}"],
            cwd=self.cwd,
            env=env,
            pass_fds=pass_fds,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        proc.backoff.started()
        thread = threading.Thread(target=self._pump, args=(proc, proc.popen), daemon=True)
        thread.start()
        proc.threads = [t for t in proc.threads if t.is_alive()] + [thread]
        say(f"started {proc.name} (pid {proc.popen.pid})")

    def _pump(self, proc: Proc, popen: subprocess.Popen[bytes]) -> None:
        assert popen.stdout is not None
        for raw in iter(popen.stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            prefix = f"{time.strftime('%H:%M:%S')} {proc.name:<{self.width}} | "
            sys.stdout.write(prefix + line + "\n")
            sys.stdout.flush()

    def exited(self) -> list[Proc]:
        """Processes that have exited by themselves and wait for their restart."""
        return [p for p in self.procs if p.restart_at is not None]

    def supervise_once(self) -> None:
        """Restart what exited by itself, once its backoff has passed; the rest run on."""
        if self.stopping:
            return
        now = time.monotonic()
        for proc in self.procs:
            if proc.popen is None:
                continue
            if proc.restart_at is None and (code := proc.popen.poll()) is not None:
                # What the dead main process leaves in its session (gunicorn's workers,
                # celery's pool) would hold its port or a task: gone before the restart.
                # Slot servers run in sessions of their own and are adopted by the next worker.
                _signal_group(proc.popen.pid, signal.SIGKILL)
                delay = proc.backoff.exited()
                proc.restart_at = now + delay
                say(
                    f"{proc.name} (pid {proc.popen.pid}) exited with {exit_description(code)} "
                    f"after {now - proc.backoff.started_at:.1f} s; restarting in {delay:g} s"
                )
            elif proc.restart_at is not None and now >= proc.restart_at:
                proc.restart_at = None
                proc.restarts += 1
                self._spawn(proc)
                say(f"restarted {proc.name} (restart {proc.restarts})")

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM every process group, SIGKILL the groups still alive after ``grace``; then
        close the sockets they inherited (refused from now on, not left in a backlog)."""
        self.stopping = True
        try:
            self._stop_processes(grace)
        finally:
            for _, sock in self.sockets.values():
                sock.close()

    def _stop_processes(self, grace: float) -> None:
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


def _terminate(pid: int) -> None:
    """SIGTERM the process a Procfile line runs, never its helpers: gunicorn's and celery's
    own processes stop their workers in order (SIGTERM to a pool process is a lost task)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)


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
