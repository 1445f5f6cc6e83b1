"""The shadow's work in a process of its own, at the lowest CPU priority.

Mirroring a request costs the gateway as much as forwarding it (a second upstream call, two
answers parsed and compared), and on the gateway's event loop that CPU is taken from live
requests: on 2 cores at 32 connections it doubled live's p50 (tests/benchmarks/
test_shadow_bench.py). So by default (``shadow_process=1``) each gateway process starts one
``python -m gateway.shadow_process`` and hands it the jobs; that process runs
:class:`gateway.shadow.ShadowMirror` (queue, workers, comparison, the flush of its cells to
Redis) at nice ``shadow_nice`` and, with ``shadow_sched_idle`` (Linux), in the SCHED_IDLE
policy: the kernel gives it CPU only when live work leaves some, and never lets it preempt a
live task. Nice 19 alone still took a share: on 2 cores at 32 connections live's p50 rose
~4 ms with it, against none with SCHED_IDLE. Under a saturating load the shadow then compares
little and drops the rest (counted): a shadow is evidence, never a cost to live.

The gateway's side, :class:`ShadowRelay`, costs a live request one frame (``_frame``) after its
answer is sent: the jobs of one event-loop turn go down the process's stdin in one write.
At most ``shadow_queue_size`` jobs are in the process's hands at once (it reports back how
many it has finished); past that a job is dropped and counted by the gateway (``dropped``,
in its own cells and /metrics) without being written. A process that dies is started again
after a second; the jobs it held are lost (logged), live requests never wait for it.

Frames on stdin: a 4-byte little-endian length, then a tuple (``_frame``):
``(0, deployment, route JSON)`` before the first job of each route object, and whenever the
route of a deployment it mirrored for changes (``(2, deployment)`` when it is gone), so jobs
queued for a shadow that has since left the route are dropped, not sent (ShadowMirror._stale);
``(1, deployment, target, headers, body, live status, live body, live ms)`` per job.
Lines on stdout: ``{"done": n, "counters": {deployment: [mirrored, dropped, errors]}}``,
totals since the process started. EOF on stdin (or a SIGTERM) stops it: queued jobs are
abandoned, the cells are flushed one last time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import sys
from typing import TYPE_CHECKING, Any

from gateway.routes import MAX_WEIGHT, Route
from gateway.settings import GatewaySettings
from gateway.shadow import ShadowBook, ShadowJob

if TYPE_CHECKING:
    from gateway.upstream import UpstreamPool

logger = logging.getLogger("modelyard.gateway")

_ROUTE, _JOB, _GONE = 0, 1, 2
_REPORT_DELAY_S = 0.005  # finished jobs are reported at most this late (and coalesced)
_RESTART_DELAY_S = 1.0
_STOP_TIMEOUT_S = 10.0


def _frame(item: tuple[Any, ...]) -> bytes:
    """A frame: its length, then a JSON header ``[values, sizes]`` and the bytes values raw.

    Not marshal or pickle: no module of the gateway turns bytes into objects with a loader
    that can build more than data (tests/security/test_deserialisation.py holds the rule);
    the bodies stay raw bytes, only the few scalars go through JSON."""
    values: list[Any] = []
    sizes: list[int] = []  # per value: its length if it is bytes, else -1
    blobs: list[bytes] = []
    for value in item:
        if isinstance(value, bytes | bytearray | memoryview):
            blob = bytes(value)
            values.append(None)
            sizes.append(len(blob))
            blobs.append(blob)
        else:
            values.append(value)
            sizes.append(-1)
    header = json.dumps([values, sizes], separators=(",", ":")).encode()
    data = len(header).to_bytes(4, "little") + header + b"".join(blobs)
    return len(data).to_bytes(4, "little") + data


def frame_read(data: bytes) -> tuple[Any, ...]:
    """The tuple a frame's data (after its length) holds; see ``_frame``."""
    size = int.from_bytes(data[:4], "little")
    values, sizes = json.loads(data[4 : 4 + size])
    position = 4 + size
    out: list[Any] = []
    for value, length in zip(values, sizes, strict=True):
        if length >= 0:
            out.append(data[position : position + length])
            position += length
        else:
            out.append(value)
    return tuple(out)


class ShadowRelay(ShadowBook):
    """The gateway's end: the same ``wanted``/``offer``/``totals`` as ShadowMirror, the work
    done in the shadow process. Its own cells hold only the jobs it dropped."""

    def __init__(self, *, settings: GatewaySettings, draw: Any = random.random) -> None:
        super().__init__()
        self.settings = settings
        self.queue_size = max(1, settings.shadow_queue_size)
        self._draw = draw
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._out: list[bytes] = []  # frames of this event-loop turn (or until the process is up)
        self._write_soon = False
        self._sent_routes: dict[str, Route] = {}  # the route object last described per deployment
        self._sent = 0  # jobs handed to the current process
        self._done = 0  # of those, finished, as it last reported
        self._theirs: dict[str, list[int]] = {}  # the current process's counters
        self._before: dict[str, list[int]] = {}  # those of the processes before it

    def start(self, pool: UpstreamPool | None = None) -> None:
        """Start the process (and restart it whenever it ends); ``pool`` is unused: the
        process has its own."""
        self._task = asyncio.create_task(self._supervise(), name="gateway-shadow-process")

    def wanted(self, route: Route) -> bool:
        shadow = route.shadow
        return shadow is not None and self._draw() * MAX_WEIGHT < shadow.weight

    def offer(self, job: ShadowJob) -> bool:
        """Hand ``job`` to the process (written at the end of this loop turn), or drop it,
        counted, when ``shadow_queue_size`` jobs are already there. True if handed over."""
        route = job.route
        assert route.shadow is not None
        if self._sent - self._done >= self.queue_size or self._closing:
            self._drop(route)
            return False
        out = self._out
        if self._sent_routes.get(route.deployment) is not route:
            self._sent_routes[route.deployment] = route
            out.append(_frame((_ROUTE, route.deployment, route.to_json())))
        out.append(
            _frame(
                (
                    _JOB,
                    route.deployment,
                    job.target,
                    job.headers,
                    job.body,
                    job.live_status,
                    job.live_body,
                    job.live_ms,
                )
            )
        )
        self._sent += 1
        self._write_later()
        return True

    def routes_changed(self, routes: dict[str, Route]) -> None:
        """Tell the process the new route of every deployment it has mirrored for."""
        for deployment, sent in list(self._sent_routes.items()):
            route = routes.get(deployment)
            if route is sent or route == sent:  # the periodic re-read parses equal routes anew
                continue
            if route is None:
                del self._sent_routes[deployment]
                self._out.append(_frame((_GONE, deployment)))
            else:
                self._sent_routes[deployment] = route
                self._out.append(_frame((_ROUTE, deployment, route.to_json())))
        if self._out:
            self._write_later()

    @property
    def pending(self) -> int:
        return self._sent - self._done

    @property
    def counters(self) -> dict[str, list[int]]:
        merged: dict[str, list[int]] = {}
        for source in (self._before, self._theirs, self._counters):
            for deployment, counts in source.items():
                into = merged.setdefault(deployment, [0, 0, 0])
                for index in range(3):
                    into[index] += counts[index]
        return merged

    def _write_later(self) -> None:
        """Write the frames at the end of this event-loop turn (once, however many come)."""
        if not self._write_soon and self._proc is not None:
            self._write_soon = True
            asyncio.get_running_loop().call_soon(self._write)

    def _write(self) -> None:
        self._write_soon = False
        proc = self._proc
        if proc is None or proc.stdin is None or not self._out:
            return
        if proc.stdin.is_closing():  # it died: the supervisor starts another
            return
        proc.stdin.write(b"".join(self._out))
        self._out.clear()

    async def _supervise(self) -> None:
        env = {**os.environ, **self.settings.to_env()}
        while not self._closing:
            try:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "gateway.shadow_process",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    env=env,
                )
            except OSError as exc:
                logger.error("could not start the shadow process: %s", exc)
                await asyncio.sleep(_RESTART_DELAY_S)
                continue
            self._proc = proc
            self._write()  # what was offered while it started
            assert proc.stdout is not None
            while line := await proc.stdout.readline():
                try:
                    report = json.loads(line)
                    self._done, self._theirs = int(report["done"]), report["counters"]
                except (ValueError, KeyError, TypeError):
                    logger.error("unreadable report from the shadow process: %r", line[:200])
            code = await proc.wait()
            self._proc = None
            if self._closing:
                return
            logger.error(
                "the shadow process exited (status %s) holding %d mirrored requests, which are "
                "lost; starting another in %.0f s",
                code,
                self._sent - self._done,
                _RESTART_DELAY_S,
            )
            for deployment, counts in self._theirs.items():
                into = self._before.setdefault(deployment, [0, 0, 0])
                for index in range(3):
                    into[index] += counts[index]
            self._theirs, self._sent, self._done = {}, 0, 0
            self._out.clear()
            self._sent_routes.clear()
            await asyncio.sleep(_RESTART_DELAY_S)

    async def close(self) -> None:
        """Stop the process: the jobs it still holds are abandoned, its cells flushed."""
        self._closing = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            self._write()
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), timeout=_STOP_TIMEOUT_S)
            except TimeoutError:
                logger.error("the shadow process did not stop within %.0f s; killed", 10)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=5)
            self._task = None


def lower_priority(nice: int, *, idle: bool = False) -> None:
    """Raise this process's nice value to ``nice`` (never lower it: that needs privileges);
    with ``idle``, also Linux's SCHED_IDLE policy, where available (set first: a process seen
    niced is already idle)."""
    if idle and hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > current:
        os.setpriority(os.PRIO_PROCESS, 0, nice)


async def _serve(settings: GatewaySettings) -> None:
    import redis.asyncio as aioredis
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError
    from redis.retry import Retry

    from gateway.balancer import Balancer
    from gateway.shadow import ShadowMirror
    from gateway.upstream import UpstreamPool

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**31 - 1)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0)
    )
    writer, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(1, "wb", buffering=0))
    # A SIGTERM (a service manager stopping the gateway's whole group) stops it as EOF does:
    # the cells are flushed. A Ctrl-C reaches it too, but the gateway's own stop closes stdin.
    loop.add_signal_handler(signal.SIGTERM, reader.feed_eof)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    report_soon = False

    def report() -> None:
        nonlocal report_soon
        report_soon = False
        if not writer.is_closing():
            line = json.dumps({"done": mirror.done, "counters": mirror.counters})
            writer.write(line.encode() + b"\n")

    def on_done() -> None:
        nonlocal report_soon
        if not report_soon:
            report_soon = True
            loop.call_later(_REPORT_DELAY_S, report)

    client = aioredis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        retry=Retry(NoBackoff(), 0),  # replay-safe flushes retry at their own pace
    )
    pool = UpstreamPool(
        connect_timeout_s=settings.upstream_connect_timeout_s,
        timeout_s=settings.shadow_timeout_s,
        keepalive_s=settings.upstream_keepalive_s,
        limit=max(1, settings.shadow_workers),
    )
    balancer = Balancer(  # shadow replicas are never ejected, so never probed
        probe_initial_s=settings.eject_probe_initial_s,
        probe_max_s=settings.eject_probe_max_s,
        probe_timeout_s=max(settings.upstream_connect_timeout_s, 0.5),
        on_probe_failed=lambda replica: None,
    )
    balancer.start(pool)
    # Room for every job the relay may hand over (its bound) plus those the workers hold.
    mirror = ShadowMirror(
        balancer=balancer,
        queue_size=settings.shadow_queue_size + settings.shadow_workers,
        workers=settings.shadow_workers,
        timeout_s=settings.shadow_timeout_s,
        on_done=on_done,
    )
    mirror.start(pool)
    stop = asyncio.Event()

    async def flush_loop() -> None:
        failing = False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=settings.shadow_flush_interval_s)
            try:
                await mirror.flush(client)
                failing = False
            except (RedisError, OSError, TimeoutError) as exc:
                if not failing:
                    logger.error("shadow comparisons flush to Redis failed, will retry: %s", exc)
                failing = True
            except Exception:
                logger.exception("shadow comparisons flush failed unexpectedly")
            if stop.is_set():
                return

    flusher = asyncio.create_task(flush_loop(), name="shadow-flush")
    routes: dict[str, Route] = {}
    try:
        while True:
            try:
                size = int.from_bytes(await reader.readexactly(4), "little")
                # Our own parent's frames, over a pipe only it holds (never a network input).
                frame = frame_read(await reader.readexactly(size))
            except asyncio.IncompleteReadError:
                break  # the gateway closed our stdin (or died)
            if frame[0] in (_ROUTE, _GONE):
                if frame[0] == _ROUTE:
                    routes[frame[1]] = Route.from_json(frame[2])
                else:
                    routes.pop(frame[1], None)
                balancer.routes_changed(routes)
                mirror.routes_changed(routes)
                continue
            route = routes[frame[1]]
            mirror.offer(ShadowJob(route, *frame[2:]))
    finally:
        await mirror.close()
        stop.set()
        await asyncio.wait({flusher}, timeout=_STOP_TIMEOUT_S)
        report()
        await pool.close()
        await client.aclose()


def main() -> None:
    settings = GatewaySettings.from_env()
    # Imported at normal priority, lowered after: on a saturated machine a SCHED_IDLE process
    # gets ~0.3 % of a core, and a shadow process restarted under load spent minutes importing
    # (seen in the suite: no comparison for 10 s after a kill) before it compared anything.
    import redis.asyncio  # noqa: F401

    import gateway.balancer
    import gateway.upstream  # noqa: F401

    lower_priority(settings.shadow_nice, idle=settings.shadow_sched_idle)
    logging.basicConfig(
        level=os.environ.get("MODELYARD_GATEWAY_LOG_LEVEL", "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d shadow] %(message)s",
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency of the gateway's uvicorn
        asyncio.run(_serve(settings))
    else:
        uvloop.run(_serve(settings))


if __name__ == "__main__":
    main()
