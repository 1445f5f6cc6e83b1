"""An in-memory runtime backend for the deployments services' tests.

A real class implementing ``RuntimeBackend`` (not a mock): it keeps its slots in a dict and
serves each started slot on a small HTTP server of its own on 127.0.0.1, answering
``POST /predict`` as a model server would, so the rollout's smoke request, the route switch
and the rollback run their real code. What a test wants to go wrong it says up front:
``refuse_start`` (a Bento whose server never gets ready), ``answers`` (what its slot says),
``events`` (what the next supervise pass reports).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from deployments.runtime.base import (
    ReplicaStatus,
    ResourceSample,
    RuntimeBackend,
    SlotEvent,
    SlotHandle,
    SlotNotFound,
    SlotStartError,
    SlotStatus,
    validate_slot_key,
)


@dataclass
class FakeSlot:
    """A slot of ``len(servers)`` replicas; ``dead`` holds the indexes of killed replicas."""

    slot_key: str
    bento_tag: str
    servers: list[ThreadingHTTPServer]
    started_at: datetime
    running: bool = True
    # (status, body) the slot answers /predict with; None: one prediction 0 per instance.
    answer: tuple[int, dict[str, Any]] | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    dead: set[int] = field(default_factory=set)
    workers: int = 1

    @property
    def server(self) -> ThreadingHTTPServer:
        return self.servers[0]

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{server.server_address[1]}" for server in self.servers]

    @property
    def url(self) -> str:
        return self.urls[0]


def _handler(slot: FakeSlot) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            slot.requests.append(body)
            status, reply = slot.answer or (
                200,
                {"predictions": [0] * len(body.get("instances") or [])},
            )
            payload = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

    return Handler


class InMemoryRuntimeBackend(RuntimeBackend):
    def __init__(self) -> None:
        self.slots_by_key: dict[str, FakeSlot] = {}
        self.started: list[tuple[str, str]] = []  # (slot key, bento tag), every start
        self.stopped: list[str] = []  # slot keys, every stop of a known slot
        self.refuse_start: dict[str, str] = {}  # bento tag -> the log tail of its failure
        self.events: list[SlotEvent] = []  # handed out (once) by the next supervise_once
        self.answers: dict[str, tuple[int, dict[str, Any]]] = {}  # bento tag -> /predict reply
        self.scaled: list[tuple[str, int]] = []  # (slot key, replicas), every slot_scale
        self.repaired: list[tuple[str, int]] = []  # (slot key, replica index), every repair
        self.batches: dict[str, tuple[int, int] | None] = {}  # slot key -> batching asked for
        self.priorities: dict[str, str] = {}  # slot key -> CPU priority, as started or set

    def slot_priority(self, *, slot_key: str, priority: str) -> None:
        self.priorities[slot_key] = priority

    # --- RuntimeBackend --------------------------------------------------------------------

    def slot_start(
        self,
        *,
        slot_key: str,
        bento_tag: str,
        replicas: int | None = None,
        workers: int | None = None,
        batch: tuple[int, int] | None = None,
        priority: str = "normal",
    ) -> SlotHandle:
        validate_slot_key(slot_key)
        replicas = replicas or 1
        self.batches[slot_key] = batch
        self.priorities[slot_key] = priority
        current = self.slots_by_key.get(slot_key)
        if current is not None and current.running and current.bento_tag == bento_tag:
            self.slot_scale(slot_key=slot_key, replicas=replicas)
            return self._handle(current)  # already serving it: a no-op, as the interface says
        if current is not None:
            self._shut(current)
        if bento_tag in self.refuse_start:
            raise SlotStartError(
                f"slot {slot_key} did not become ready", log_tail=self.refuse_start[bento_tag]
            )
        self.started.append((slot_key, bento_tag))
        slot = FakeSlot(
            slot_key,
            bento_tag,
            [],
            datetime.now(UTC),
            answer=self.answers.get(bento_tag),
            workers=workers or 1,
        )
        for _ in range(replicas):
            slot.servers.append(self._serve(slot))
        self.slots_by_key[slot_key] = slot
        return self._handle(slot)

    def slot_scale(self, *, slot_key: str, replicas: int, timeout: float = 30) -> SlotHandle:
        slot = self.slots_by_key.get(slot_key)
        if slot is None or not slot.running:
            raise SlotNotFound(f"no slot {slot_key}")
        self.scaled.append((slot_key, replicas))
        while len(slot.servers) < replicas:
            slot.servers.append(self._serve(slot))
        while len(slot.servers) > replicas:
            server = slot.servers.pop()
            slot.dead.discard(len(slot.servers))
            server.shutdown()
            server.server_close()
        return self._handle(slot)

    def replica_repair(self, *, slot_key: str, url: str) -> SlotEvent | None:
        slot = self.slots_by_key.get(slot_key)
        if slot is None or url not in slot.urls:
            raise SlotNotFound(f"slot {slot_key} has no replica at {url}")
        index = slot.urls.index(url)
        if index not in slot.dead:
            return None
        slot.dead.discard(index)
        self.repaired.append((slot_key, index))
        return self.event(slot_key, "repaired", f"replica {index}: killed by a test; restarted")

    def kill_replica(self, slot_key: str, index: int) -> None:
        """For tests: the replica stops answering (its port refuses) until repaired."""
        self.slots_by_key[slot_key].dead.add(index)

    def slot_stop(self, *, slot_key: str, timeout: float = 10) -> None:
        slot = self.slots_by_key.get(slot_key)
        if slot is not None and slot.running:
            self.stopped.append(slot_key)
            self._shut(slot)

    def slot_status(self, *, slot_key: str) -> SlotStatus:
        slot = self.slots_by_key.get(slot_key)
        if slot is None:
            raise SlotNotFound(f"no slot {slot_key}")
        replicas = tuple(
            ReplicaStatus(
                index=index,
                url=url,
                state="dead" if (index in slot.dead or not slot.running) else "ready",
            )
            for index, url in enumerate(slot.urls)
        )
        return SlotStatus(
            slot_key=slot_key,
            bento_tag=slot.bento_tag,
            url=slot.url if slot.running else "",
            running=slot.running,
            ready=slot.running and not slot.dead,
            restarts=0,
            last_event=None,
            started_at=slot.started_at,
            replicas=replicas if slot.running else (),
            workers=slot.workers,
        )

    def slot_resources(self, *, slot_key: str) -> ResourceSample:
        self.slot_status(slot_key=slot_key)
        return ResourceSample(slot_key, 0.0, 0, 1, datetime.now(UTC))

    def slots(self) -> list[SlotStatus]:
        return [self.slot_status(slot_key=key) for key in self.slots_by_key]

    def supervise_once(self) -> list[SlotEvent]:
        events, self.events = self.events, []
        return events

    # --- what the local backend adds (runtime_servers_stop looks for it) ---------------------

    def servers_stop(self, *, reason: str, timeout: float = 10) -> list[SlotEvent]:
        events = []
        for key, slot in self.slots_by_key.items():
            if slot.running:
                self.slot_stop(slot_key=key)
                events.append(self.event(key, "stopped", reason))
        return events

    # --- for tests ------------------------------------------------------------------------

    @staticmethod
    def event(slot_key: str, kind: str, message: str) -> SlotEvent:
        return SlotEvent(slot_key=slot_key, kind=kind, message=message, at=datetime.now(UTC))

    def close(self) -> None:
        for slot in self.slots_by_key.values():
            self._shut(slot)

    def _handle(self, slot: FakeSlot) -> SlotHandle:
        port = slot.server.server_address[1]
        return SlotHandle(
            slot.slot_key,
            slot.bento_tag,
            slot.url,
            f"fake:{port}",
            None,
            port,
            slot.started_at,
            urls=tuple(slot.urls),
        )

    @staticmethod
    def _serve(slot: FakeSlot) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(slot))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    @staticmethod
    def _shut(slot: FakeSlot) -> None:
        if slot.running:
            slot.running = False
            for server in slot.servers:
                server.shutdown()
                server.server_close()
