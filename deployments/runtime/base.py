"""What a serving runtime offers the rollout state machine: slots that serve one Bento each.

A slot (``churn-prod.blue``) is a place where one Bento is served by ``replicas`` servers
(replicas), each with its own URL and ``workers`` BentoML workers. The local backend runs a
``bentoml serve`` process per replica; the Kubernetes backend runs a Deployment per slot
(one pod per replica). Callers hold only slot keys and Bento tags, never PIDs or pods, so the
backends are interchangeable.

Events are plain values that the caller records (audit log, rollout step log); backends do
not import Django.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

# Slot keys name files and Kubernetes objects, so they keep to a portable alphabet.
# A slot's CPU priority (RuntimeBackend.slot_start): a shadow's servers run low, so mirrored
# requests never take CPU from the live ones on the same machine.
PRIORITY_NORMAL = "normal"
PRIORITY_LOW = "low"
PRIORITIES = (PRIORITY_NORMAL, PRIORITY_LOW)

SLOT_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate_slot_key(slot_key: str) -> str:
    if not isinstance(slot_key, str) or not SLOT_KEY_PATTERN.match(slot_key):
        raise ValueError(
            f"slot key {slot_key!r} must be 1-128 characters of letters, digits, '.', '_' or "
            f"'-', starting with a letter or digit (e.g. 'churn-prod.blue')"
        )
    return slot_key


class RuntimeBackendError(Exception):
    """A slot operation failed; the message says which slot and why."""


class SlotStartError(RuntimeBackendError):
    """A slot's server did not become ready; ``log_tail`` holds the end of its log."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


class SlotNotFound(RuntimeBackendError):
    """No slot with this key is known to the backend."""


@dataclass(frozen=True)
class SlotHandle:
    slot_key: str
    bento_tag: str
    url: str  # base URL of the server, e.g. http://127.0.0.1:41234
    identifier: str  # "pid:<pid>" locally; a pod or Deployment name elsewhere
    pid: int | None
    port: int
    started_at: datetime
    # Every replica's base URL (``url`` is the first); () for a backend behind one address.
    urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class SlotEvent:
    slot_key: str
    kind: str  # started, stopped, crashed, restarted, restart_failed, adopted, orphans_killed
    message: str
    at: datetime

    @classmethod
    def now(cls, slot_key: str, kind: str, message: str) -> SlotEvent:
        """An event that happens now (every backend stamps its events in UTC)."""
        return cls(slot_key=slot_key, kind=kind, message=message, at=datetime.now(UTC))


ReplicaState = Literal["ready", "starting", "dead"]


@dataclass(frozen=True)
class ReplicaStatus:
    """One server of a slot: ``ready`` takes traffic, ``starting`` not yet, ``dead`` not at all
    (crashed, or waiting for the supervisor's restart)."""

    index: int
    url: str
    state: ReplicaState
    pid: int | None = None
    restarts: int = 0


@dataclass(frozen=True)
class SlotStatus:
    slot_key: str
    bento_tag: str
    url: str  # the first replica's URL
    running: bool  # some replica's server process (tree) is alive
    ready: bool  # every replica answered /readyz with 200 just now
    restarts: int  # restarts by the supervisor since the slot was started, all replicas
    last_event: SlotEvent | None
    pid: int | None = None
    started_at: datetime | None = None
    replicas: tuple[ReplicaStatus, ...] = ()
    workers: int = 1

    @property
    def ready_urls(self) -> list[str]:
        """The URLs that may take traffic: ready replicas only, in replica order."""
        if not self.replicas:
            return [self.url] if self.ready and self.url else []
        return [replica.url for replica in self.replicas if replica.state == "ready"]


@dataclass(frozen=True)
class ResourceSample:
    """Resources of a slot's whole process tree at one moment.

    ``cpu_seconds`` is cumulative (user + system) over the live processes: like a
    Prometheus counter it drops when a process restarts, so consumers take deltas and
    treat a decrease as a reset.
    """

    slot_key: str
    cpu_seconds: float
    rss_bytes: int
    process_count: int
    taken_at: datetime


class RuntimeBackend(ABC):
    """Serving slots: start, stop, inspect, measure and supervise them."""

    @abstractmethod
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
        """Serve ``bento_tag`` in the slot on ``replicas`` servers and return once all are ready.

        ``replicas`` servers with ``workers`` BentoML workers each, batching concurrent
        requests up to ``batch`` = (max rows, max wait ms) (None: the backend's defaults).
        ``priority`` :data:`PRIORITY_LOW` (a shadow's slot) asks for servers that only get
        the CPU other slots leave, where the backend can (see :meth:`slot_priority`).
        A no-op if the
        slot already serves this Bento so; replaces the servers if they serve another (or at
        another priority). Raises
        SlotStartError (with the log tail) if one is not ready in time, and leaves nothing
        running then.
        """

    def slot_priority(self, *, slot_key: str, priority: str) -> None:
        """Give the slot's running servers ``priority`` (a shadow promoted to a canary answers
        users: it gets :data:`PRIORITY_NORMAL` back) and return once they all run at it, in
        place or replaced (the local backend renices, or restarts a server the kernel refuses
        to raise; Kubernetes replaces the pods); later restarts keep it. A backend without
        CPU priorities does nothing (this default)."""
        return None

    @abstractmethod
    def slot_scale(self, *, slot_key: str, replicas: int, timeout: float = 30) -> SlotHandle:
        """Run ``replicas`` servers in the slot: start the missing ones (returns once they are
        ready), stop the extra ones (gracefully: in-flight requests finish, ``timeout`` at most).

        The caller drops the extra replicas from the route before (they must get no new
        requests); raises SlotNotFound for a slot that is not started.
        """

    @abstractmethod
    def replica_repair(self, *, slot_key: str, url: str) -> SlotEvent | None:
        """Check the slot's replica at ``url`` now and restart it if it is dead.

        One event naming the cause (exit code or signal, last error line of its log) and the
        restart; None if the replica was fine (or another repair got there first).
        """

    @abstractmethod
    def slot_stop(self, *, slot_key: str, timeout: float = 10) -> None:
        """Stop the slot's server (gracefully, then forcibly after ``timeout``); idempotent."""

    @abstractmethod
    def slot_status(self, *, slot_key: str) -> SlotStatus:
        """The slot's current state; raises SlotNotFound for an unknown slot."""

    def slot_serving(self, *, slot_key: str, bento_tag: str) -> bool:
        """Whether the slot runs ``bento_tag`` and was healthy when last checked, cheaply.

        For the rollback's warm check, which runs inside the API call: a backend should answer
        from what it already knows (its records, its supervisor's last probe) rather than probe
        the server again. This default falls back to :meth:`slot_status`.
        """
        try:
            status = self.slot_status(slot_key=slot_key)
        except SlotNotFound:
            return False
        return status.running and status.bento_tag == bento_tag

    @abstractmethod
    def slot_resources(self, *, slot_key: str) -> ResourceSample:
        """CPU and memory of the slot's servers, summed over all replicas' processes."""

    @abstractmethod
    def slots(self) -> list[SlotStatus]:
        """Every slot the backend manages."""

    @abstractmethod
    def supervise_once(self) -> list[SlotEvent]:
        """Check every slot once, restart crashed servers (with backoff); what happened."""
