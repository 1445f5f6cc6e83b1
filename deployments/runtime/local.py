"""Serving slots as local ``bentoml serve`` processes, supervised from a state directory.

Everything the backend knows lives in ``state_dir`` (one JSON record per slot, written
atomically), never only in memory, so a new backend instance — after the supervising
process restarted — sees the servers its predecessor started: it re-adopts the live ones
(PID checked together with the process start time, against PID reuse) and restarts the
dead ones, instead of orphaning or duplicating them. All changes to a slot happen under
that slot's file lock, so two supervisors, or a rollout and a supervisor, never start two
servers for one slot. The records, locks and logs are ``local_state``'s (``SlotState``);
this module is the process control around them.

BentoML's serving arbiter starts its worker in a session of its own, and that worker
outlives a SIGKILLed arbiter (still answering on the port). Every process of a slot
therefore carries ``MODELYARD_SLOT=<state dir id>/<slot key>`` in its environment, which
the workers inherit; stopping, crash recovery and supervision find leftovers by that
mark, not by process group.

A server holds none of the platform's environment (no database or Redis URL, no secret
key): it starts as every model process does (``core.model_process``), in its slot's home,
as the unprivileged model user where the machine allows; the slot's record and log say
how it was confined.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import psutil

from core.model_process import ModelProcessStart, model_process_start
from deployments.integrations import bentoml as bentoml_integration
from deployments.runtime.base import (
    PRIORITIES,
    PRIORITY_LOW,
    PRIORITY_NORMAL,
    ReplicaState,
    ReplicaStatus,
    ResourceSample,
    RuntimeBackend,
    RuntimeBackendError,
    SlotEvent,
    SlotHandle,
    SlotNotFound,
    SlotStartError,
    SlotStatus,
    validate_slot_key,
)
from deployments.runtime.local_state import (
    SlotRecord,
    SlotState,
    index_of,
    last_error_line,
    log_cause,
    log_refusal,
    slot_of,
    unit_of,
)
from registry.modelkit import serving as modelkit_serving

logger = logging.getLogger(__name__)

SLOT_ENV = "MODELYARD_SLOT"
# The lock of a whole slot (start, scale, stop) apart from its replicas' locks, which the
# supervisor and repairs take one by one.
_SLOT_LOCK_PREFIX = "slot~"
# How long a replica may fail /readyz (as the supervisor saw) and still count as ready.
_UNREADY_GRACE_S = 10.0
_EXIT_NOTE = "exit-note.json"
# Runs the server as its child, forwards SIGTERM/SIGINT and writes how the child ended to the
# note (a negative returncode is a signal). Inline, not a module: the model user runs it with
# no access to the platform's code. Written by hand because nothing in the standard library
# or our dependencies records a non-child's exit status.
_EXIT_NOTE_SCRIPT = """
import json, os, signal, subprocess, sys
note, argv = sys.argv[1], sys.argv[2:]
child = subprocess.Popen(argv)
for number in (signal.SIGTERM, signal.SIGINT):
    signal.signal(number, lambda received, frame: child.send_signal(received))
code = child.wait()
try:
    with open(note, "w") as fh:
        json.dump({"pid": child.pid, "returncode": code}, fh)
except OSError:
    pass
sys.exit(code if code >= 0 else 128 - code)
"""
_PORT_ATTEMPTS = 3
# How often a start waiting for /readyz reads its log for a loader refusal (log_refusal):
# one repeats on every restart, so it fails the start at once, not at the ready deadline.
_REFUSAL_CHECK_SECONDS = 0.5


class LocalProcessBackend(RuntimeBackend):
    """One ``bentoml serve <bento>`` process tree per slot on this machine."""

    def __init__(
        self,
        home: Path,
        state_dir: Path,
        host: str = "127.0.0.1",
        ready_timeout: float = 60,
        *,
        workers: int = 1,
        backoff_base: float = 2.0,
        backoff_max: float = 300.0,
        stable_after: float = 60.0,
        log_max_bytes: int = 10 * 1024 * 1024,
    ) -> None:
        self.home = Path(home).resolve()
        self.state_dir = Path(state_dir).resolve()
        self.host = host
        self.ready_timeout = float(ready_timeout)
        self.workers = workers
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.state = SlotState(self.state_dir, log_max_bytes=log_max_bytes)
        # Marks this state dir's processes; two backends on two state dirs never mix.
        self._mark_prefix = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:12] + "/"
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._known: set[tuple[str, int]] = set()  # (slot, pid) this instance has seen alive

    # ------------------------------------------------------------------ public API

    def slot_start(
        self,
        *,
        slot_key: str,
        bento_tag: str,
        replicas: int | None = None,
        workers: int | None = None,
        batch: tuple[int, int] | None = None,
        priority: str = PRIORITY_NORMAL,
    ) -> SlotHandle:
        validate_slot_key(slot_key)
        replicas = 1 if replicas is None else replicas
        if replicas < 1:
            raise ValueError("replicas must be >= 1")
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {PRIORITIES}, got {priority!r}")
        workers = workers or self.workers
        with self.state.slot_lock(
            _SLOT_LOCK_PREFIX + slot_key, timeout=2 * self.ready_timeout + 60
        ):
            units = [unit_of(slot_key, index) for index in range(replicas)]
            self._units_start(
                units, bento_tag=bento_tag, workers=workers, batch=batch, priority=priority
            )
            self._units_stop(self._units_of(slot_key, beyond=replicas), timeout=10)
            return self._slot_handle(slot_key)

    def slot_priority(self, *, slot_key: str, priority: str) -> None:
        """Renice the slot's running processes (nice, SCHED_IDLE or not, their autogroup) and
        record ``priority`` for its restarts. Raising a priority needs CAP_SYS_NICE: where the
        kernel refuses it, that server is restarted at ``priority`` on its port (one replica
        at a time, the others serving), so a shadow promoted to a canary never answers users
        from a server that only gets idle CPU. Returns once every server runs at it."""
        validate_slot_key(slot_key)
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {PRIORITIES}, got {priority!r}")
        refused: list[tuple[SlotRecord, str]] = []
        for unit in self._units_of(slot_key):
            with self.state.slot_lock(unit, timeout=2 * self.ready_timeout + 30):
                record = self.state.load(unit)
                if record is None:
                    continue
                denied = self._renice(unit, priority)
                if denied:
                    refused.append((record, denied))  # its record keeps the old priority
                else:
                    record.priority = priority
                    self.state.save(record)
        for record, denied in refused:
            logger.info(
                "slot %s: priority %s refused in place (%s); restarting its server at it",
                record.slot_key,
                priority,
                denied,
            )
            # The record's priority differs: _unit_start replaces the server, same port.
            self._unit_start(
                record.slot_key,
                bento_tag=record.bento_tag,
                workers=record.workers,
                batch=(record.batch_max_size, record.batch_max_latency_ms),
                priority=priority,
            )

    def slot_scale(self, *, slot_key: str, replicas: int, timeout: float = 30) -> SlotHandle:
        validate_slot_key(slot_key)
        if replicas < 1:
            raise ValueError("replicas must be >= 1")
        with self.state.slot_lock(
            _SLOT_LOCK_PREFIX + slot_key, timeout=2 * self.ready_timeout + 60
        ):
            current = [
                record for record in self.state.records() if slot_of(record.slot_key) == slot_key
            ]
            if not current:
                raise SlotNotFound(f"no slot {slot_key!r} in {self.state_dir}")
            first = min(current, key=lambda record: index_of(record.slot_key))
            units = [unit_of(slot_key, index) for index in range(replicas)]
            # Only the missing ones start: a replica already serving is left alone (no-op).
            self._units_start(
                units,
                bento_tag=first.bento_tag,
                workers=first.workers,
                batch=(first.batch_max_size, first.batch_max_latency_ms),
                priority=first.priority,
            )
            # SIGTERM first: BentoML's server stops accepting and finishes what is in flight.
            self._units_stop(self._units_of(slot_key, beyond=replicas), timeout=timeout)
            return self._slot_handle(slot_key)

    def replica_repair(self, *, slot_key: str, url: str) -> SlotEvent | None:
        validate_slot_key(slot_key)
        record = next(
            (
                record
                for record in self.state.records()
                if slot_of(record.slot_key) == slot_key and self._url(record) == url
            ),
            None,
        )
        if record is None:
            raise SlotNotFound(f"slot {slot_key!r} has no replica at {url}")
        unit = record.slot_key
        # Waits for a supervisor or another repair holding this replica: after it, the
        # replica is found alive and nothing happens twice.
        with self.state.slot_lock(unit, timeout=2 * self.ready_timeout + 30):
            record = self.state.load(unit)
            if record is None:
                return None
            if self._alive(record) is not None and self._ready(record):
                return None
            started = time.monotonic()
            cause = self._crash_cause(record)
            self._kill_slot(unit, record, timeout=5)
            record.pid = record.create_time = record.unready_since = None
            try:
                self._spawn_until_ready(record)
            except SlotStartError as exc:
                record.failures += 1
                record.next_attempt_at = time.time() + self._backoff(record.failures)
                event = self._event(
                    record,
                    "repair_failed",
                    f"{cause}; restart failed: {str(exc).splitlines()[0]}",
                )
                self.state.save(record)
                return event
            record.restarts += 1
            record.next_attempt_at = None
            event = self._event(
                record,
                "repaired",
                f"{cause}; restarted in {time.monotonic() - started:.1f} s at "
                f"{self._url(record)} (pid {record.pid})",
            )
            self.state.save(record)
            return event

    def _units_start(
        self,
        units: list[str],
        *,
        bento_tag: str,
        workers: int,
        batch: tuple[int, int] | None = None,
        priority: str = PRIORITY_NORMAL,
    ) -> None:
        """Start (or keep) every unit, in parallel: the cold starts overlap (3 replicas in 1.7x
        one's time on 2 cores, tests/benchmarks/test_replicas_bench.py).

        If one fails, the ones this call started are stopped again and its error raised.
        """
        with ThreadPoolExecutor(max_workers=len(units)) as pool:
            results = list(
                pool.map(
                    lambda unit: self._unit_start_caught(
                        unit, bento_tag=bento_tag, workers=workers, batch=batch, priority=priority
                    ),
                    units,
                )
            )
        errors = [error for error in results if error is not None]
        if errors:
            self._units_stop(units, timeout=5)
            raise errors[0]

    def _unit_start_caught(
        self,
        unit: str,
        *,
        bento_tag: str,
        workers: int,
        batch: tuple[int, int] | None,
        priority: str = PRIORITY_NORMAL,
    ) -> SlotStartError | None:
        try:
            self._unit_start(
                unit, bento_tag=bento_tag, workers=workers, batch=batch, priority=priority
            )
        except SlotStartError as exc:
            return exc
        return None

    def _unit_start(
        self,
        unit: str,
        *,
        bento_tag: str,
        workers: int,
        batch: tuple[int, int] | None = None,
        priority: str = PRIORITY_NORMAL,
    ) -> None:
        batch_max_size, batch_max_latency_ms = batch or (
            modelkit_serving.DEFAULT_BATCH_MAX_SIZE,
            modelkit_serving.DEFAULT_BATCH_MAX_LATENCY_MS,
        )
        with self.state.slot_lock(unit, timeout=2 * self.ready_timeout + 30):
            record = self.state.load(unit)
            if (
                record is not None
                and record.bento_tag == bento_tag
                and record.workers == workers
                and (record.batch_max_size, record.batch_max_latency_ms)
                == (batch_max_size, batch_max_latency_ms)
                and record.priority == priority
                and self._alive(record)
            ):
                # Already serving this Bento: no-op, but only hand it out once it is ready
                # (a supervisor may have just restarted it).
                self._known.add((unit, record.pid or 0))
                try:
                    self._wait_ready(record, deadline=time.monotonic() + self.ready_timeout)
                except SlotStartError:
                    self._kill_slot(unit, record, timeout=5)
                    self.state.delete_record(unit)
                    raise
                return
            if record is not None:
                self._kill_slot(unit, record, timeout=10)
                if record.bento_tag != bento_tag:
                    self._event(record, "stopped", f"replaced {record.bento_tag} by {bento_tag}")
            else:
                self._kill_processes(self._marked(unit), timeout=5)
            if not bentoml_integration.bento_exists(home=self.home, bento_tag=bento_tag):
                raise self._not_built(unit, bento_tag)
            new = SlotRecord(
                slot_key=unit,
                bento_tag=bento_tag,
                host=self.host,
                port=record.port if record is not None else 0,
                workers=workers,
                batch_max_size=batch_max_size,
                batch_max_latency_ms=batch_max_latency_ms,
                history=record.history if record is not None else [],
                priority=priority,
            )
            try:
                self._spawn_until_ready(new)
            except SlotStartError:
                self.state.delete_record(unit)
                raise
            self._event(new, "started", f"serving {bento_tag} at {self._url(new)} (pid {new.pid})")
            self.state.save(new)

    def _units_stop(self, units: list[str], *, timeout: float) -> None:
        for unit in units:
            with self.state.slot_lock(unit, timeout=2 * self.ready_timeout + 30):
                record = self.state.load(unit)
                if record is not None:
                    self._kill_slot(unit, record, timeout=timeout)
                else:
                    self._kill_processes(self._marked(unit), timeout=timeout)
                self.state.delete_record(unit)
                with contextlib.suppress(FileNotFoundError):
                    # The unit's home only holds its Bento (hard links) and BentoML's scratch.
                    _remove_tree(self.state_dir / "homes" / unit)

    def _units_of(self, slot_key: str, *, beyond: int = 0) -> list[str]:
        """The slot's recorded (or still marked) units with a replica index >= ``beyond``."""
        names = {record.slot_key for record in self.state.records()} | set(self._marked_by_slot())
        return sorted(
            (name for name in names if slot_of(name) == slot_key and index_of(name) >= beyond),
            key=index_of,
        )

    def _slot_records(self, slot_key: str) -> list[SlotRecord]:
        records = [
            record for record in self.state.records() if slot_of(record.slot_key) == slot_key
        ]
        return sorted(records, key=lambda record: index_of(record.slot_key))

    def _slot_handle(self, slot_key: str) -> SlotHandle:
        records = self._slot_records(slot_key)
        if not records:
            raise SlotNotFound(f"no slot {slot_key!r} in {self.state_dir}")
        first = records[0]
        return SlotHandle(
            slot_key=slot_key,
            bento_tag=first.bento_tag,
            url=self._url(first),
            identifier=f"pid:{first.pid}",
            pid=first.pid,
            port=first.port,
            started_at=_dt(first.started_at) or datetime.now(UTC),
            urls=tuple(self._url(record) for record in records),
        )

    def slot_stop(self, *, slot_key: str, timeout: float = 10) -> None:
        validate_slot_key(slot_key)
        with self.state.slot_lock(
            _SLOT_LOCK_PREFIX + slot_key, timeout=2 * self.ready_timeout + 60
        ):
            self._units_stop(self._units_of(slot_key) or [slot_key], timeout=timeout)

    def servers_stop(self, *, reason: str, timeout: float = 10) -> list[SlotEvent]:
        """Stop every slot's server but keep its record, as a machine's shutdown does.

        The record loses its pid, so the next supervision round starts the server again
        (a ``restarted`` event) instead of finding a dead pid and calling it a crash.
        """
        events: list[SlotEvent] = []
        for slot_key in sorted(record.slot_key for record in self.state.records()):
            with self.state.slot_lock(slot_key, timeout=2 * self.ready_timeout + 30):
                record = self.state.load(slot_key)
                if record is None or record.pid is None:
                    continue
                pid = record.pid
                self._kill_slot(slot_key, record, timeout=timeout)
                record.pid = record.create_time = record.unready_since = None
                record.next_attempt_at = None
                record.failures = 0
                events.append(self._event(record, "stopped", f"server pid {pid} stopped: {reason}"))
                self.state.save(record)
        return events

    def slot_status(self, *, slot_key: str) -> SlotStatus:
        validate_slot_key(slot_key)
        records = self._slot_records(slot_key)
        if not records:
            raise SlotNotFound(f"no slot {slot_key!r} in {self.state_dir}")
        return self._status(slot_key, records)

    def slot_serving(self, *, slot_key: str, bento_tag: str) -> bool:
        """From the slot's records: same Bento, the very processes we started still alive, and
        the supervisor's last /readyz probes not failing -- no HTTP round trip (~0.1 ms)."""
        validate_slot_key(slot_key)
        try:
            records = self._slot_records(slot_key)
        except RuntimeBackendError:
            return False
        return bool(records) and all(
            record.bento_tag == bento_tag
            and record.unready_since is None
            and self._alive(record) is not None
            for record in records
        )

    def slot_resources(self, *, slot_key: str) -> ResourceSample:
        validate_slot_key(slot_key)
        records = self._slot_records(slot_key)
        if not records:
            raise SlotNotFound(f"no slot {slot_key!r} in {self.state_dir}")
        cpu, rss, count = 0.0, 0, 0
        for record in records:
            main = self._alive(record)
            if main is None:
                continue
            for proc in _tree(main):
                try:
                    with proc.oneshot():
                        times = proc.cpu_times()
                        cpu += times.user + times.system
                        rss += proc.memory_info().rss
                    count += 1
                except (psutil.NoSuchProcess, psutil.ZombieProcess):
                    continue
        return ResourceSample(
            slot_key=slot_key,
            cpu_seconds=cpu,
            rss_bytes=rss,
            process_count=count,
            taken_at=datetime.now(UTC),
        )

    def slots(self) -> list[SlotStatus]:
        by_slot: dict[str, list[SlotRecord]] = {}
        for record in self.state.records():
            by_slot.setdefault(slot_of(record.slot_key), []).append(record)
        return [
            self._status(slot_key, sorted(records, key=lambda r: index_of(r.slot_key)))
            for slot_key, records in sorted(by_slot.items())
        ]

    def supervise_once(self) -> list[SlotEvent]:
        """Check every slot: adopt live servers, kill strays, restart crashed ones.

        A slot whose lock is held (a start or stop in progress elsewhere) is skipped this
        round. A crashed server is restarted at once the first time, then after
        ``backoff_base * 2**(n-2)`` seconds (capped at ``backoff_max``) for the n-th
        consecutive failure; a server that ran ``stable_after`` seconds resets the count.
        A server that stays unready for ``ready_timeout`` (a worker crash-looping in its
        ``__init__`` while the arbiter lives on) counts as crashed.
        """
        events: list[SlotEvent] = []
        marked = self._marked_by_slot()
        keys = {record.slot_key for record in self.state.records()} | set(marked)
        for slot_key in sorted(keys):
            lock = self.state.slot_lock(slot_key, timeout=0)
            try:
                lock.acquire()
            except RuntimeBackendError:
                continue
            try:
                # Re-read under the lock: the record may have changed since the scan.
                record = self.state.load(slot_key)
                if record is None:
                    # Processes of a slot nobody manages (e.g. a start that died before it
                    # recorded its server): kill them rather than let them hold a port.
                    strays = marked.get(slot_key, [])
                    if self._kill_processes(strays, timeout=5):
                        events.append(
                            SlotEvent.now(
                                slot_of(slot_key),
                                "orphans_killed",
                                f"killed {len(strays)} process(es) of an unmanaged slot",
                            )
                        )
                    continue
                try:
                    self._supervise_record(record, marked.get(slot_key, []), events)
                finally:
                    self.state.save(record)
            finally:
                lock.release()
        return events

    # ------------------------------------------------------------------ supervision

    def _supervise_record(
        self, record: SlotRecord, marked: list[psutil.Process], events: list[SlotEvent]
    ) -> None:
        slot_key = record.slot_key
        now = time.time()
        main = self._alive(record)
        if main is not None:
            if (slot_key, main.pid) not in self._known:
                self._known.add((slot_key, main.pid))
                if main.pid not in self._children:
                    events.append(
                        self._event(record, "adopted", f"re-adopted running server pid {main.pid}")
                    )
            tree = {proc.pid for proc in _tree(main)}
            strays = [proc for proc in marked if proc.pid not in tree]
            if self._kill_processes(strays, timeout=5):
                events.append(
                    self._event(record, "orphans_killed", f"killed {len(strays)} stray process(es)")
                )
            if self._ready(record):
                record.unready_since = None
                if record.failures and now - (record.started_at or now) >= self.stable_after:
                    record.failures = 0
                return
            if record.unready_since is None:
                record.unready_since = now
                return
            if now - record.unready_since < self.ready_timeout:
                return
            self._kill_slot(slot_key, record, timeout=5)
            self._crashed(
                record,
                now,
                "unresponsive",
                f"/readyz has not answered 200 for {now - record.unready_since:.0f} s; killed",
                events,
            )
        elif record.pid is not None:
            cause = self._crash_cause(record)
            self._kill_processes(self._marked(slot_key), timeout=5)
            self._crashed(record, now, "crashed", f"{cause} ({record.bento_tag})", events)
        if record.next_attempt_at is not None and now < record.next_attempt_at:
            return
        old_url = self._url(record)
        try:
            self._spawn_until_ready(record)
        except SlotStartError as exc:
            record.failures += 1
            record.next_attempt_at = time.time() + self._backoff(record.failures)
            events.append(
                self._event(
                    record,
                    "restart_failed",
                    # The first line says why; the full log tail stays in the slot's log.
                    f"{str(exc).splitlines()[0]}; next attempt in "
                    f"{self._backoff(record.failures):.0f} s",
                )
            )
            return
        record.restarts += 1
        record.next_attempt_at = None
        moved = "" if self._url(record) == old_url else f" (moved from {old_url})"
        events.append(
            self._event(
                record,
                "restarted",
                f"restart {record.restarts}: serving {record.bento_tag} at "
                f"{self._url(record)}{moved} (pid {record.pid})",
            )
        )

    def _crashed(
        self, record: SlotRecord, now: float, kind: str, message: str, events: list[SlotEvent]
    ) -> None:
        if record.started_at is not None and now - record.started_at >= self.stable_after:
            record.failures = 0
        record.failures += 1
        record.pid = None
        record.create_time = None
        record.unready_since = None
        record.next_attempt_at = now + self._backoff(record.failures)
        events.append(self._event(record, kind, message))

    def _crash_cause(self, record: SlotRecord) -> str:
        """How the record's server ended and the last error line of its own output.

        From its parent's exit note (written by the wrapper every server starts under), else
        from our own child's exit status; a server still alive (but unready) says so.
        """
        pid = record.pid
        how = self._exit_status(pid) if pid is not None else ""
        note = self.state_dir / "homes" / record.slot_key / _EXIT_NOTE
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            code = int(json.loads(note.read_text())["returncode"])
            how = f" with status {code}" if code >= 0 else f" with signal {-code}"
        if how.startswith(" with signal "):
            number = int(how.rsplit(" ", 1)[1])
            with contextlib.suppress(ValueError):
                how = f" killed by signal {number} ({signal.Signals(number).name})"
        elif how.startswith(" with status "):
            how = f" exited{how}"
        elif self._alive(record) is not None:
            how = " alive but not answering /readyz"
        else:
            how = " exited (how is unknown: its parent left no note)"
        error = last_error_line(self.state.log_tail(record.slot_key, offset=record.log_offset))
        return f"server pid {pid}{how}; " + (
            f"last error: {error}" if error else "no error line in its log"
        )

    def _backoff(self, failures: int) -> float:
        if failures <= 1:
            return 0.0
        return float(min(self.backoff_base * 2 ** (failures - 2), self.backoff_max))

    # ------------------------------------------------------------------ processes

    def _spawn_until_ready(self, record: SlotRecord) -> None:
        """Start the server for ``record`` and wait for /readyz; record pid/port on it.

        The record is saved as soon as the process exists, so a supervisor that dies
        while waiting leaves a record its successor can adopt or clean up.
        """
        slot_home = self._prepare_home(record.slot_key, record.bento_tag)
        preferred = record.port
        for attempt in range(_PORT_ATTEMPTS):
            port = (
                preferred
                if attempt == 0 and _port_free(record.host, preferred)
                else _free_port(record.host)
            )
            record.port = port
            (slot_home / _EXIT_NOTE).unlink(missing_ok=True)
            start = self._process_start(record, slot_home, port)
            record.isolation = start.confinement.to_dict()
            log_offset = self.state.open_log(
                record.slot_key,
                f"starting {record.bento_tag} on port {port} ({_confinement_line(start)})",
            )
            with self.state.log_path(record.slot_key).open("ab") as log:
                # Own session: a Ctrl-C or a death of the supervising process does not take
                # the server down; a new supervisor adopts it instead.
                proc = subprocess.Popen(
                    start.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=start.cwd,
                    env=start.env,
                    start_new_session=True,
                )
            self._children[proc.pid] = proc
            record.pid = proc.pid
            record.started_at = time.time()
            try:
                record.create_time = psutil.Process(proc.pid).create_time()
            except psutil.NoSuchProcess:
                record.create_time = None
            record.unready_since = None
            record.log_offset = log_offset
            record.starting = True
            self.state.save(record)
            try:
                self._wait_ready(
                    record, deadline=time.monotonic() + self.ready_timeout, log_offset=log_offset
                )
                self._known.add((record.slot_key, proc.pid))
                record.starting = False
                if record.priority == PRIORITY_LOW:
                    self._lower(record.slot_key)
                return
            except SlotStartError as exc:
                self._kill_slot(record.slot_key, record, timeout=5)
                record.pid = None
                record.create_time = None
                if (
                    "address already in use" in exc.log_tail.lower()
                    and attempt + 1 < _PORT_ATTEMPTS
                ):
                    continue  # another process took the port between our probe and bind
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _lower(self, unit: str) -> None:
        """A low slot's servers, once ready: nice 19, SCHED_IDLE (CPU only when nothing else
        wants it) and their session's autogroup at nice 19 (the kernel weighs an autogroup
        like one process: alone in its own, a niced server would get as much CPU as the whole
        session of a live one). Workers BentoML starts later inherit it from their arbiter.

        Not from the start: a SCHED_IDLE process gets ~0.3 % of a busy core, and a shadow
        started beside a loaded live slot spent minutes importing and missed its readiness
        deadline. Lowering needs no privilege (the servers run as our user, or as the model
        user when we are root)."""
        denied = self._renice(unit, PRIORITY_LOW)
        if denied:
            logger.warning("slot %s: not lowered (%s)", unit, denied)

    def _renice(self, unit: str, priority: str) -> str:
        """``priority`` on the unit's running processes; the first refusal ("pid N: why"),
        or "" when every one has it."""
        for proc in self._marked(unit):
            try:
                _process_priority(proc.pid, priority)
            except psutil.NoSuchProcess:
                continue
            except (OSError, psutil.AccessDenied) as exc:
                return f"pid {proc.pid}: {exc}"
        return ""

    def _process_start(self, record: SlotRecord, slot_home: Path, port: int) -> ModelProcessStart:
        """How the slot's server starts: as every model process does (core.model_process),
        none of the platform's environment, its home as its own folder, as the model user
        where the machine allows; it reads its Bento from its home (_prepare_home)."""
        extra = bentoml_integration.serve_environment(
            bentoml_home=slot_home,
            workers=record.workers,
            batch_max_size=record.batch_max_size,
            batch_max_latency_ms=record.batch_max_latency_ms,
        )
        extra[SLOT_ENV] = self._mark_prefix + record.slot_key
        return model_process_start(
            argv=[
                # The server's parent notes how it ended: whoever repairs it later (another
                # worker process, not the one that started it) can name the signal or status.
                sys.executable,
                "-c",
                _EXIT_NOTE_SCRIPT,
                str(slot_home / _EXIT_NOTE),
                *bentoml_integration.serve_command(
                    bento_tag=record.bento_tag, host=record.host, port=port
                ),
            ],
            home=slot_home,
            extra_env=extra,
            reads=[slot_home / "bentos"],
        )

    def _wait_ready(
        self, record: SlotRecord, *, deadline: float, log_offset: int | None = None
    ) -> None:
        next_log_check = time.monotonic() + _REFUSAL_CHECK_SECONDS
        while True:
            if self._ready(record):
                return
            proc = self._children.get(record.pid or -1)
            exited = proc.poll() if proc is not None else None
            if exited is not None or self._alive(record) is None:
                status = f" with status {exited}" if exited is not None else ""
                tail = self.state.log_tail(record.slot_key, offset=log_offset)
                raise SlotStartError(
                    f"slot {record.slot_key}: server for {record.bento_tag} exited{status} "
                    f"before it was ready{log_cause(tail)}; last log lines:\n{tail}",
                    tail,
                )
            now = time.monotonic()
            if now >= next_log_check:
                next_log_check = now + _REFUSAL_CHECK_SECONDS
                tail = self.state.log_tail(record.slot_key, offset=log_offset)
                refusal = log_refusal(tail)
                if refusal:
                    raise SlotStartError(
                        f"slot {record.slot_key}: server for {record.bento_tag} cannot load "
                        f"its model: {refusal} (pid {record.pid} killed; every restart would "
                        f"refuse the same file); last log lines:\n{tail}",
                        tail,
                    )
            if now >= deadline:
                tail = self.state.log_tail(record.slot_key, offset=log_offset)
                # A service whose __init__ raises never exits: BentoML restarts the worker
                # every few seconds and /readyz stays 503, so the deadline decides.
                raise SlotStartError(
                    f"slot {record.slot_key}: server for {record.bento_tag} did not answer "
                    f"/readyz with 200 within {self.ready_timeout:.0f} s (pid {record.pid} "
                    f"killed){log_cause(tail)}; last log lines:\n{tail}",
                    tail,
                )
            # A refused connect costs ~0.1 ms: poll often, a rollout waits on this.
            time.sleep(0.025)

    def _ready(self, record: SlotRecord) -> bool:
        if not record.port:
            return False
        # http.client, not httpx: no proxy settings apply, and no INFO log line per poll.
        connection = http.client.HTTPConnection(
            self._connect_host(record), record.port, timeout=1.0
        )
        try:
            connection.request("GET", "/readyz")
            return connection.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def _alive(self, record: SlotRecord) -> psutil.Process | None:
        """The slot's main process if it is still the very process we started."""
        if record.pid is None:
            return None
        child = self._children.get(record.pid)
        if child is not None and child.poll() is not None:
            return None  # exited (and now reaped)
        try:
            proc = psutil.Process(record.pid)
            if (
                record.create_time is not None
                and abs(proc.create_time() - record.create_time) > 0.5
            ):
                return None  # the PID now belongs to another process
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return None
        except psutil.AccessDenied:
            return None
        return proc

    def _exit_status(self, pid: int) -> str:
        child = self._children.pop(pid, None)
        if child is None:
            return ""
        try:
            # A dead child may not have been reaped yet: reap it now to learn how it died.
            code = child.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return ""
        return f" with signal {-code}" if code < 0 else f" with status {code}"

    def _kill_slot(self, slot_key: str, record: SlotRecord, *, timeout: float) -> None:
        """Stop everything of a slot: SIGTERM, then SIGKILL what is left after ``timeout``.

        With the arbiter alive only it gets SIGTERM (it shuts its workers down in order);
        without it, the leftover workers get SIGTERM themselves.
        """
        main = self._alive(record)
        if main is not None:
            procs = [*_tree(main), *self._marked(slot_key)]
            with contextlib.suppress(psutil.NoSuchProcess):
                main.terminate()
            self._kill_processes(procs, timeout=timeout, terminate=False)
        # Leftovers, and a worker the arbiter restarted while shutting down (a new PID).
        self._kill_processes(self._marked(slot_key), timeout=min(timeout, 5))
        if record.pid is not None:
            child = self._children.pop(record.pid, None)
            if child is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=1)

    def _kill_processes(
        self, procs: list[psutil.Process], *, timeout: float, terminate: bool = True
    ) -> bool:
        """SIGTERM ``procs`` (unless told not to), SIGKILL those alive after ``timeout``.

        Returns whether there was anything to stop.
        """
        unique = {proc.pid: proc for proc in procs if proc.pid != os.getpid()}
        if not unique:
            return False
        if terminate:
            for proc in unique.values():
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.terminate()
        _, alive = psutil.wait_procs(list(unique.values()), timeout=timeout)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)
        for pid in unique:
            child = self._children.get(pid)
            if child is not None:
                child.poll()  # reap our own child so it does not linger as a zombie
        return True

    def _marked(self, slot_key: str) -> list[psutil.Process]:
        return self._marked_by_slot().get(slot_key, [])

    def _marked_by_slot(self) -> dict[str, list[psutil.Process]]:
        """Live processes carrying this state dir's slot mark, by slot key."""
        found: dict[str, list[psutil.Process]] = {}
        me = os.getpid()
        for proc in psutil.process_iter():
            if proc.pid == me:
                continue
            try:
                mark = proc.environ().get(SLOT_ENV)
                if mark is None or not mark.startswith(self._mark_prefix):
                    continue
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
                continue
            found.setdefault(mark[len(self._mark_prefix) :], []).append(proc)
        return found

    # ------------------------------------------------------------------ homes

    def _prepare_home(self, slot_key: str, bento_tag: str) -> Path:
        """The slot's own BENTOML_HOME, holding only its Bento and that Bento's models.

        Every ``bentoml serve`` wipes $BENTOML_HOME/prometheus_multiproc_dir, so slots
        sharing a home would mix up each other's /metrics; and the server, running as the
        model user, reads its own Bento there (hard links) and nothing else of the store.
        """
        slot_home = self.state_dir / "homes" / slot_key
        slot_home.mkdir(parents=True, exist_ok=True)
        if not bentoml_integration.bento_exists(home=self.home, bento_tag=bento_tag):
            raise self._not_built(slot_key, bento_tag)  # e.g. deleted since the slot started
        bentoml_integration.bento_serving_copy(home=self.home, bento_tag=bento_tag, dest=slot_home)
        return slot_home

    def _not_built(self, slot_key: str, bento_tag: str) -> SlotStartError:
        return SlotStartError(
            f"slot {slot_key}: Bento {bento_tag} is not built in the store at {self.home}"
        )

    # ------------------------------------------------------------------ values

    def _connect_host(self, record: SlotRecord) -> str:
        # A server bound to all interfaces is reached on the loopback address.
        return "127.0.0.1" if record.host in ("0.0.0.0", "") else record.host  # noqa: S104

    def _url(self, record: SlotRecord) -> str:
        return f"http://{self._connect_host(record)}:{record.port}"

    def _event(self, record: SlotRecord, kind: str, message: str) -> SlotEvent:
        """An event of the record's slot; a replica other than the first is named in it."""
        index = index_of(record.slot_key)
        if index:
            message = f"replica {index}: {message}"
        event = SlotEvent.now(slot_of(record.slot_key), kind, message)
        record.last_event = {"kind": kind, "message": message, "at": event.at.isoformat()}
        record.history = ([*record.history, record.last_event])[-20:]
        return event

    def _status(self, slot_key: str, records: list[SlotRecord]) -> SlotStatus:
        replicas = []
        for record in records:
            alive = self._alive(record) is not None
            state: ReplicaState
            if not alive:
                state = "dead"
            elif record.starting:
                state = "starting"
            elif (
                record.unready_since is None
                or time.time() - record.unready_since < _UNREADY_GRACE_S
                or self._ready(record)
            ):
                # A slow probe of a busy server is no reason to drop it from the route: only
                # once the supervisor has seen it unready for a while does it leave.
                state = "ready"
            else:
                state = "starting"
            replicas.append(
                ReplicaStatus(
                    index=index_of(record.slot_key),
                    url=self._url(record),
                    state=state,
                    pid=record.pid if alive else None,
                    restarts=record.restarts,
                )
            )
        first = records[0]
        events = [record.last_event for record in records if record.last_event]
        last = max(events, key=lambda event: event["at"]) if events else None
        return SlotStatus(
            slot_key=slot_key,
            bento_tag=first.bento_tag,
            url=self._url(first),
            running=any(replica.state != "dead" for replica in replicas),
            ready=all(replica.state == "ready" for replica in replicas),
            restarts=sum(record.restarts for record in records),
            last_event=(
                SlotEvent(
                    slot_key=slot_key,
                    kind=last["kind"],
                    message=last["message"],
                    at=datetime.fromisoformat(last["at"]),
                )
                if last
                else None
            ),
            pid=replicas[0].pid,
            started_at=_dt(first.started_at),
            replicas=tuple(replicas),
            workers=first.workers,
        )


def _confinement_line(start: ModelProcessStart) -> str:
    confinement = start.confinement
    who = f"as {confinement.user.name}" if confinement.user else "as the platform's user"
    return "; ".join([who, *confinement.notes])


def _process_priority(pid: int, priority: str) -> None:
    """A low slot's priority (LocalProcessBackend._lower) on ``pid``, or normal back."""
    low = priority == PRIORITY_LOW
    if hasattr(os, "SCHED_IDLE"):
        policy = os.SCHED_IDLE if low else os.SCHED_OTHER
        os.sched_setscheduler(pid, policy, os.sched_param(0))
    psutil.Process(pid).nice(19 if low else 0)
    if os.getsid(pid) != os.getsid(0):  # never our own session's autogroup
        with contextlib.suppress(FileNotFoundError):
            Path(f"/proc/{pid}/autogroup").write_text("19" if low else "0")


def _tree(main: psutil.Process) -> list[psutil.Process]:
    try:
        return [main, *main.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return [main]


def _dt(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch is not None else None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    if not port:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the server will: a port in TIME_WAIT from the previous server is reusable.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _remove_tree(path: Path) -> None:
    import shutil

    # Homes of older versions linked the shared store: remove the links, never follow them.
    for name in bentoml_integration.STORE_DIRS:
        link = path / name
        if link.is_symlink():
            link.unlink()
    shutil.rmtree(path)
