"""The local backend's state directory: slot records, locks and logs, apart from processes.

``SlotState`` owns ``state_dir``: one JSON record per unit (a slot's replica) under
``slots/``, written atomically, beside that unit's file lock; each unit's server log under
``logs/``, rotated by size; and the folders themselves with their modes (``homes/`` is made
here too, its contents are the backend's). Here as well: how a replica's unit is named after
its slot, and what a server's log says about why it failed.

Kept apart from ``local.py``, which starts, watches and stops the processes: what is
persisted and how it is read back is plain files and values, no process control.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from deployments.runtime.base import PRIORITY_NORMAL, RuntimeBackendError
from registry.modelkit import serving as modelkit_serving

# A slot's replica 0 keeps the slot key as its unit name (records, logs, homes, marks written
# before replicas existed stay valid); replica i > 0 is "<slot key>@<i>" ('@' is never part
# of a slot key, so the names cannot collide).
_REPLICA_SEP = "@"
_LOG_TAIL_LINES = 40


@dataclass
class SlotRecord:
    """What is persisted per slot (state_dir/slots/<key>.json)."""

    slot_key: str
    bento_tag: str
    host: str
    port: int
    workers: int
    # Adaptive batching of the server (modelkit.serving.BatchSettings), from the deployment.
    batch_max_size: int = modelkit_serving.DEFAULT_BATCH_MAX_SIZE
    batch_max_latency_ms: int = modelkit_serving.DEFAULT_BATCH_MAX_LATENCY_MS
    pid: int | None = None
    create_time: float | None = None  # psutil create_time of pid: guards against PID reuse
    started_at: float | None = None  # epoch seconds of the current server's start
    restarts: int = 0
    failures: int = 0  # consecutive crashes/failed starts without a stable run between
    next_attempt_at: float | None = None  # when a crashed server may be restarted
    unready_since: float | None = None
    last_event: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    isolation: dict[str, Any] | None = None  # Confinement.to_dict() of the current server
    log_offset: int | None = None  # where the current server's output starts in its log
    starting: bool = False  # spawned, not yet ready once (it gets no traffic until it is)
    priority: str = PRIORITY_NORMAL  # PRIORITY_LOW: a shadow's servers (the backend's _lower)


class SlotLock:
    """A slot's file lock; ``timeout=0`` tries once (supervision skips busy slots)."""

    def __init__(self, path: Path, slot_key: str, timeout: float) -> None:
        self._lock = FileLock(str(path))
        self._slot_key = slot_key
        self._timeout = timeout

    def acquire(self) -> None:
        try:
            self._lock.acquire(timeout=self._timeout, blocking=self._timeout > 0)
        except Timeout:
            raise RuntimeBackendError(
                f"slot {self._slot_key} is busy (another start/stop holds its lock)"
            ) from None

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> SlotLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class SlotState:
    """A state directory: per unit a record and its lock (slots/) and a log (logs/); homes/
    holds the units' homes (LocalProcessBackend._prepare_home)."""

    def __init__(self, root: Path, *, log_max_bytes: int) -> None:
        self.root = root
        self.log_max_bytes = log_max_bytes
        # Servers run as the model user: they pass through homes/ to their own home and
        # never see the records or the logs (other slots' tracebacks and requests).
        for sub, mode in (("slots", 0o700), ("homes", 0o711), ("logs", 0o700)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
            (self.root / sub).chmod(mode)

    def record_path(self, slot_key: str) -> Path:
        return self.root / "slots" / f"{slot_key}.json"

    def slot_lock(self, slot_key: str, *, timeout: float) -> SlotLock:
        return SlotLock(self.root / "slots" / f"{slot_key}.lock", slot_key, timeout)

    def load(self, slot_key: str) -> SlotRecord | None:
        try:
            data = json.loads(self.record_path(slot_key).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise RuntimeBackendError(f"slot {slot_key}: unreadable state file: {exc}") from exc
        return SlotRecord(**data)

    def records(self) -> list[SlotRecord]:
        records = []
        for path in sorted((self.root / "slots").glob("*.json")):
            record = self.load(path.stem)
            if record is not None:
                records.append(record)
        return records

    def save(self, record: SlotRecord) -> None:
        path = self.record_path(record.slot_key)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(record), indent=2))
        os.replace(tmp, path)  # atomic: readers never see half a record

    def delete_record(self, slot_key: str) -> None:
        self.record_path(slot_key).unlink(missing_ok=True)

    def log_path(self, slot_key: str) -> Path:
        return self.root / "logs" / f"{slot_key}.log"

    def open_log(self, slot_key: str, line: str) -> int:
        """Rotate a large log, append a header line; the offset where this run's output starts."""
        path = self.log_path(slot_key)
        if path.exists() and path.stat().st_size > self.log_max_bytes:
            os.replace(path, path.with_suffix(".log.1"))
        with path.open("a", encoding="utf-8") as fh:
            fh.write(f"--- {datetime.now(UTC).isoformat(timespec='seconds')} {line}\n")
        return path.stat().st_size

    def log_tail(
        self, slot_key: str, *, offset: int | None = None, lines: int = _LOG_TAIL_LINES
    ) -> str:
        path = self.log_path(slot_key)
        try:
            with path.open("rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                start = max(offset or 0, size - 64 * 1024)
                fh.seek(start)
                text = fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        kept = [line for line in text.splitlines() if line.strip()]
        return "\n".join(kept[-lines:])


# ---------------------------------------------------------------------- replica units


def unit_of(slot_key: str, index: int) -> str:
    return slot_key if index == 0 else f"{slot_key}{_REPLICA_SEP}{index}"


def slot_of(unit: str) -> str:
    return unit.partition(_REPLICA_SEP)[0]


def index_of(unit: str) -> int:
    _, sep, index = unit.partition(_REPLICA_SEP)
    return int(index) if sep and index.isdigit() else 0


# ---------------------------------------------------------------------- what a log says


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b(: .*)?$")


def _exception_lines(log_tail: str) -> Iterator[str]:
    """The exception lines of a log (``ValueError: ...``), stripped and cut to 300
    characters, the last first."""
    for line in reversed(log_tail.splitlines()):
        line = line.strip()
        if _EXCEPTION_LINE.match(line):
            yield line[:300]


def log_cause(log_tail: str) -> str:
    """The last exception line of a log, as ``: <line>``, or ``""``."""
    line = next(_exception_lines(log_tail), None)
    return f": {line}" if line else ""


# The model loader's refusals (modelkit.allowlist / modelkit.loading; named, not imported:
# the platform never imports what runs inside model processes). They are decided by the
# file and the recorded decision alone, so a server whose worker raised one will raise it on
# every restart BentoML makes: its start fails at once instead of at the ready deadline
# (90 s by default), and the operator reads why.
_REFUSALS = ("GlobalRefusedError", "LoaderDecisionError", "UntrustedTypesFoundException")


def log_refusal(log_tail: str) -> str:
    """The last line of ``log_tail`` that raises one of the loader's refusals, or ``""``."""
    for line in _exception_lines(log_tail):
        if line.partition(":")[0].rpartition(".")[2] in _REFUSALS:
            return line
    return ""


_ERROR_LINE = re.compile(r"\b(ERROR|CRITICAL|FATAL|Traceback)\b")


def last_error_line(log_tail: str) -> str:
    """The last exception line of a log, else the last line logged at ERROR or worse."""
    exception = next(_exception_lines(log_tail), None)
    if exception:
        return exception
    lines = [line.strip() for line in log_tail.splitlines() if line.strip()]
    for line in reversed(lines):
        if _ERROR_LINE.search(line) and not line.startswith("---"):
            return line[:300]
    return ""
