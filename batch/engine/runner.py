"""Worker side of the batch child (batch/engine/_child.py): start it once, send it many chunks.

Each Celery pool process keeps at most a few children, one per Bento, alive between tasks,
so a model is loaded once per worker process rather than once per chunk. Every wait on a
child has a deadline; a child that dies, hangs or garbles a frame is killed and the chunk
counts as a transient failure (retried alone); a model that raises on the data is not.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch.engine._child import _LENGTHS, encode_message
from core.model_process import Grant, grant_read, grant_write_folder, model_process_start, reclaim

if TYPE_CHECKING:
    from deployments.services import LocalBento

CHILD_SCRIPT = Path(__file__).resolve().with_name("_child.py")  # started by path
MAX_CHILDREN = 2  # per worker process: a schedule's new and old version side by side
_FOLDER_PREFIX = "modelyard-batch-child-"  # then the worker's pid


class ChildError(Exception):
    """The child died, hung or broke the protocol: worth retrying with a fresh child."""


class PredictError(Exception):
    """The model raised on this data: retrying the same rows would raise again."""


class ChunkFileError(Exception):
    """The child could not read the chunk's input or write its output: a storage problem,
    retried like any transient failure; the child itself is fine and kept."""


class BatchChild:
    def __init__(self, *, bento: LocalBento, start_timeout: float, threads: int = 1) -> None:
        # A folder of its own as HOME, TMPDIR and working directory, removed with the child
        # (or, if this worker process was killed, by the next one to start a child).
        _remove_orphaned_folders()
        self.folder = Path(tempfile.mkdtemp(prefix=f"{_FOLDER_PREFIX}{os.getpid()}-"))
        # As every model process (core.model_process): none of the platform's environment,
        # the model user where the machine allows. It reads its Bento and, per chunk, what
        # chunk_send grants it.
        # Parallelism comes from chunks on many workers; a BLAS or OpenMP pool per child
        # on top oversubscribes the cores (measured on 2 cores: a logistic regression took
        # 0.17 s per 100k-row chunk with two children, 0.04 s once each had one thread).
        try:
            # Its own copy of the one Bento it loads (hard links): the store is not its to read.
            bento_home = self.folder  # BentoML writes a little beside its stores (envs/)
            bento_dir = bento.serving_copy(dest=bento_home)
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        start = model_process_start(
            argv=[sys.executable, str(CHILD_SCRIPT), str(bento_dir)],
            home=self.folder,
            extra_env={
                "BENTOML_HOME": str(bento_home),
                "BENTOML_DO_NOT_TRACK": "True",
                "PYTHONUNBUFFERED": "1",
            },
            threads=threads,
            reads=[Path(bento_dir), CHILD_SCRIPT],
            passes=_storage_root(),
        )
        self.confinement = start.confinement
        self.owner_pid = os.getpid()
        self.in_flight = 0  # requests sent and not yet answered
        # Per request in flight: its output file and the read grant on its input.
        self._outputs: collections.deque[tuple[Path, Grant]] = collections.deque()
        try:
            self.proc = subprocess.Popen(
                start.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd=start.cwd,
                env=start.env,
            )
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        try:
            header, _ = self._read(time.monotonic() + start_timeout, "starting")
        except BaseException:
            self.kill()
            raise
        if not header.get("ok"):
            self.stop()
            raise ChildError(f"the batch child could not load {bento_dir}: {header.get('error')}")
        self.info = header

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None and self.owner_pid == os.getpid()

    def chunk_send(
        self,
        *,
        input_path: Path,
        batch_index: int,
        rows: int,
        output_path: Path,
        id_column: str,
        probabilities: bool,
    ) -> None:
        """Ask the child to map record batch ``batch_index`` of ``input_path``, predict it and
        write the result to ``output_path`` (a new file). Only paths cross the pipe. The
        child reads the next request's rows while it predicts this one, so a caller keeps
        one request queued behind the running one; replies come in order (chunk_reply)."""
        # The staged input is the platform's file (0640): the model user may read this one;
        # it writes its output as a new file into the (sticky) chunk folder.
        # Two chunks of one staged file in flight share its one grant (and its original
        # mode, put back once neither is).
        shared = [grant for _, grant in self._outputs if grant.path == input_path]
        try:
            granted = shared[0] if shared else grant_read(input_path, self.confinement)
            grant_write_folder(output_path.parent, self.confinement)
        except OSError as exc:
            raise ChunkFileError(f"giving the model user its chunk files: {exc}") from exc
        spec = {
            "input": str(input_path),
            "batch": batch_index,
            "rows": rows,
            "output": str(output_path),
            "id_column": id_column,
            "probabilities": probabilities,
        }
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(encode_message({"chunk": spec}))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            self.kill()
            raise ChildError(f"the batch child went away: {exc}") from exc
        self.in_flight += 1
        self._outputs.append((output_path, granted))

    def chunk_reply(self, *, timeout: float) -> dict[str, Any]:
        """The summary (rows, columns, timings) of the oldest request sent. The caller checks
        the paths and renames the file. The child is killed unless the exchange ended
        cleanly (a late reply would be taken for the next chunk's)."""
        if not self.in_flight:
            raise ChildError("no chunk was sent to the batch child")
        try:
            header, _ = self._read(time.monotonic() + timeout, "predicting")
        except BaseException:  # a time limit, a garbled frame, a signal: never reuse it
            self.kill()
            raise
        self.in_flight -= 1
        output, granted = self._outputs.popleft()
        if all(other is not granted for _, other in self._outputs):
            granted.revoke()  # another job's model process must not read this job's rows
        if self.confinement.user is not None and header.get("ok") and output.is_file():
            reclaim(output)  # the platform's again before it is renamed into place
        if not header.get("ok"):
            if header.get("kind") == "file":
                raise ChunkFileError(header.get("error") or "the chunk's files failed")
            raise PredictError(header.get("error") or "the model failed")
        return header

    def reply_ready(self) -> bool:
        """Whether the oldest request's reply has begun to arrive (or the child is gone)."""
        assert self.proc.stdout is not None
        return bool(select.select([self.proc.stdout.fileno()], [], [], 0)[0])

    def chunk_run(self, *, timeout: float, **chunk: Any) -> dict[str, Any]:
        """One chunk, sent and answered (nothing else in flight)."""
        self.chunk_send(**chunk)
        return self.chunk_reply(timeout=timeout)

    def _read(self, deadline: float, doing: str) -> tuple[dict[str, Any], bytes]:
        import json

        try:
            lengths = self._read_exact(_LENGTHS.size, deadline, doing)
            header_len, body_len = _LENGTHS.unpack(lengths)
            header = json.loads(self._read_exact(header_len, deadline, doing))
            body = self._read_exact(body_len, deadline, doing) if body_len else b""
        except ValueError as exc:
            self.kill()
            raise ChildError(f"the batch child broke the protocol while {doing}: {exc}") from exc
        except ChildError:
            self.kill()
            raise
        return header, body

    def _read_exact(self, size: int, deadline: float, doing: str) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        parts, remaining = [], size
        while remaining:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChildError(f"the batch child did not answer in time while {doing}")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
            part = os.read(fd, min(remaining, 1 << 20))
            if not part:
                code = self.proc.poll()
                raise ChildError(f"the batch child exited (status {code}) while {doing}")
            parts.append(part)
            remaining -= len(part)
        return b"".join(parts)

    def kill(self) -> None:
        if self.owner_pid == os.getpid() and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.in_flight = 0
        for grant in {id(grant): grant for _, grant in self._outputs}.values():
            grant.revoke()
        self._outputs.clear()
        self._remove_folder()

    def _remove_folder(self) -> None:
        if self.owner_pid == os.getpid() and self.proc.poll() is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def stop(self) -> None:
        """Close the child's stdin (it exits when idle); kill it if it does not."""
        if self.owner_pid != os.getpid():
            return  # a forked copy of the handle: the child belongs to the parent
        with contextlib.suppress(OSError):
            if self.proc.stdin:
                self.proc.stdin.close()
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._remove_folder()


def _remove_orphaned_folders() -> None:
    """Remove the folders of children whose worker process is gone (killed, never stopped)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{_FOLDER_PREFIX}*-*"):
        owner = folder.name[len(_FOLDER_PREFIX) :].partition("-")[0]
        if owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _storage_root() -> list[Path]:
    """The local artifact storage root, which the child must reach for its chunk files."""
    from django.core.files.storage import default_storage

    try:
        return [Path(default_storage.path(""))]
    except NotImplementedError:  # an object store: chunks are local temporary copies
        return []


_children: dict[str, BatchChild] = {}


def child_for(*, bento: LocalBento, start_timeout: float, threads: int = 1) -> BatchChild:
    """This process's child for ``bento``, started (and its model loaded) if needed."""
    bento_tag = bento.tag
    child = _children.get(bento_tag)
    if child is not None and child.alive and not child.in_flight:
        return child
    if child is not None:  # dead, or left with unanswered requests by an interrupted caller
        _children.pop(bento_tag).kill()
    for tag in list(_children)[: max(0, len(_children) - MAX_CHILDREN + 1)]:
        _children.pop(tag).stop()
    child = BatchChild(bento=bento, start_timeout=start_timeout, threads=threads)
    _children[bento_tag] = child
    return child


def children_stop() -> None:
    while _children:
        _children.popitem()[1].stop()
