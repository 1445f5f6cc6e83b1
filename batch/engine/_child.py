"""The batch child: loads one Bento's model once and predicts many chunks over a pipe.

Started by path with the platform's Python (``python batch/engine/_child.py <bento dir>``)
by a batch worker, never imported by Django code except for the framing helpers below. The
model is only ever loaded here, never in the Celery worker itself: unpickling a model runs
its code, and a crashing or leaking model must only take this process down.

Protocol over stdin/stdout (stdout is kept for frames only; anything the model or BentoML
prints goes to stderr): a frame is two big-endian u64 lengths, a JSON header and a body.
A request names a chunk's files instead of carrying its rows (``{"chunk": {...}}``): the
child maps the chunk's record batch of the staged input (an Arrow IPC file, see the
worker's batch/services/files.py), predicts, writes the output chunk (Arrow IPC too)
(``prediction``, ``probability_<label>`` named by the contract's labels when asked, the
id column first when the job has one) to the temporary path the worker chose and answers
with a small summary. The worker
checks the paths, renames the file into place and counts the chunk, so the exactly-once
rules stay on its side. (Rows used to cross the pipe both ways as Arrow IPC streams: about
25 ms of copying per 250k rows, with the worker idle meanwhile.)

The worker may send the next chunk before the current one is answered (at most a couple
ahead); replies come in request order. A reader thread takes requests off the pipe and
maps each chunk's record batch while the main thread predicts the one before, so the model
never waits for the disk (Arrow and the estimators' compiled loops release the GIL).

The child exits when stdin closes, so it never outlives the worker that started it.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import struct
import sys
import threading
import time
from typing import Any, BinaryIO

_LENGTHS = struct.Struct(">QQ")


def encode_message(header: dict[str, Any], body: bytes = b"", body_len: int | None = None) -> bytes:
    """A frame; with ``body_len`` only its head, the body to be written after it."""
    raw = json.dumps(header).encode()
    size = len(body) if body_len is None else body_len
    return _LENGTHS.pack(len(raw), size) + raw + body


def _read_exact(stream: BinaryIO, size: int) -> bytes | None:
    parts, remaining = [], size
    while remaining:
        part = stream.read(remaining)
        if not part:
            return None
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def read_message(stream: BinaryIO) -> tuple[dict[str, Any], bytes] | None:
    """One frame from a blocking stream; None on a clean end of stream."""
    lengths = _read_exact(stream, _LENGTHS.size)
    if lengths is None:
        return None
    header_len, body_len = _LENGTHS.unpack(lengths)
    header = _read_exact(stream, header_len)
    body = _read_exact(stream, body_len) if body_len else b""
    if header is None or body is None:
        return None
    return json.loads(header), body


class _Predictor:
    """The Bento's service instance: its contract's Predictor types and predicts a chunk."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.native = True  # every family answers through modelkit.contract

    def predict(self, table: Any, probabilities: bool) -> Any:
        contract = self.service.predictor.contract
        names = [feature["name"] for feature in contract["features"]]
        if contract.get("names_source") == "positional" and table.column_names != names:
            table = table.rename_columns(names)  # planned by position (batch/services/inputs)
        return self.service.predictor.predict_table(table, probabilities)


class _ChunkFileError(Exception):
    """The chunk's files could not be read or written: a storage problem, worth a retry."""


class _Loaded:
    """A request with its chunk's rows read (or the error reading them raised)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.table: Any = None
        self.error: BaseException | None = None
        self.timings: dict[str, float] = {}


def _chunk_read(spec: dict[str, Any]) -> Any:
    """One record batch of the staged input (memory-mapped, not copied), checked against
    the row count the worker expects.

    The paths come from the worker, which built and checked them (under the job's working
    directory or its own temporary files); they are never taken from a job's user input.
    Still, only absolute paths are accepted, and the output must be a new file.
    """
    import pyarrow as pa

    source, target = spec["input"], spec["output"]
    if not (os.path.isabs(source) and os.path.isabs(target)):
        raise _ChunkFileError("chunk paths must be absolute")
    try:
        with pa.memory_map(source) as mapped:  # the batch keeps the mapping alive
            batch = pa.ipc.open_file(mapped).get_batch(int(spec["batch"]))
        table = pa.Table.from_batches([batch])
    except (OSError, ValueError, IndexError, pa.ArrowException) as exc:
        raise _ChunkFileError(f"reading record batch {spec['batch']}: {_describe(exc)}") from exc
    if table.num_rows != int(spec["rows"]):
        raise _ChunkFileError(
            f"record batch {spec['batch']} has {table.num_rows} rows, expected {spec['rows']}"
        )
    return table


def _chunk_finish(predictor: _Predictor, loaded: _Loaded) -> dict[str, Any]:
    """Predict a chunk that was read and write its output file; the reply's summary."""
    import pyarrow as pa

    spec, table, timings = loaded.spec, loaded.table, loaded.timings
    target = spec["output"]
    clock, cpu = time.monotonic(), time.thread_time()
    id_column = spec.get("id_column") or None
    features = table.drop_columns([id_column]) if id_column else table
    result = predictor.predict(features, bool(spec.get("probabilities")))
    if result.num_rows != table.num_rows:
        raise ValueError(f"model answered {result.num_rows} rows for {table.num_rows}")
    if id_column:
        result = pa.table(
            {
                id_column: table.column(id_column),
                **{n: result.column(n) for n in result.column_names},
            }
        )
    timings["predict"] = round(time.monotonic() - clock, 4)
    # CPU time beside wall time: a gap means the model waited for a core, not for us.
    timings["predict_cpu"] = round(time.thread_time() - cpu, 4)
    clock = time.monotonic()
    try:
        # "x": never overwrite; the worker's temporary name is unique per attempt.
        handle = open(target, "xb")  # noqa: SIM115 - closed below, removed if half-written
    except OSError as exc:
        raise _ChunkFileError(f"writing the output chunk: {_describe(exc)}") from exc
    try:
        with handle, pa.ipc.new_file(handle, result.schema) as writer:
            writer.write_table(result)
    except (OSError, pa.ArrowException) as exc:
        with contextlib.suppress(OSError):
            os.unlink(target)  # ours, half-written
        raise _ChunkFileError(f"writing the output chunk: {_describe(exc)}") from exc
    timings["write"] = round(time.monotonic() - clock, 4)
    return {"rows": result.num_rows, "columns": result.column_names, "timings": timings}


_END = object()  # stdin closed: no more requests
_BROKEN = "broken"  # a request could not be decoded: the protocol is broken


def _requests_read(frames_in: BinaryIO, loaded: queue.Queue[Any]) -> None:
    """Reader thread: take each request off the pipe and read its rows ahead of the model.

    The queue holds one chunk, so at most one is read ahead of the one being predicted."""
    while True:
        try:
            message = read_message(frames_in)
        except (ValueError, OSError) as exc:
            loaded.put((_BROKEN, _describe(exc)))
            return
        if message is None:
            loaded.put(_END)
            return
        header, _body = message
        spec = header.get("chunk") if isinstance(header, dict) else None
        if not isinstance(spec, dict):
            loaded.put((_BROKEN, "a request without a chunk"))
            return
        item = _Loaded(spec)
        clock = time.monotonic()
        try:
            item.table = _chunk_read(spec)
        except Exception as exc:  # answered in order, as that chunk's reply
            item.error = exc
        item.timings["read"] = round(time.monotonic() - clock, 4)
        loaded.put(item)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")[:2000]


def main(argv: list[str]) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    # Run by path, Python puts batch/engine/ first on sys.path; its modules (runner, ...)
    # would shadow top-level names that a model's code may import.
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the worker
    frames_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # print() from the model or BentoML must not corrupt the frames
    frames_in = os.fdopen(os.dup(0), "rb", buffering=1 << 20)
    (bento_dir,) = argv
    started = time.monotonic()
    try:
        import bentoml

        service = bentoml.load(bento_dir)
        # Modelyard builds @bentoml.service Bentos, whose service is called for its instance;
        # a legacy bentoml.Service is not callable, and fails here as a load error.
        if not callable(service):
            raise TypeError(f"'{type(service).__name__}' object is not callable")
        predictor = _Predictor(service())
    except BaseException as exc:
        frames_out.write(encode_message({"ok": False, "kind": "load", "error": _describe(exc)}))
        frames_out.flush()
        return 1
    frames_out.write(
        encode_message(
            {
                "ok": True,
                "ready": True,
                "pid": os.getpid(),
                "native": predictor.native,
                "load_seconds": round(time.monotonic() - started, 3),
            }
        )
    )
    frames_out.flush()
    loaded: queue.Queue[Any] = queue.Queue(maxsize=1)
    threading.Thread(target=_requests_read, args=(frames_in, loaded), daemon=True).start()
    while True:
        item = loaded.get()
        if item is _END:
            return 0
        if isinstance(item, tuple):  # (_BROKEN, why): say so on stderr and stop
            print(f"batch child: {item[1]}", file=sys.stderr)
            return 2
        began = time.monotonic()
        try:
            if item.error is not None:
                raise item.error
            summary = _chunk_finish(predictor, item)
            reply = {"ok": True, "seconds": round(time.monotonic() - began, 6), **summary}
        except _ChunkFileError as exc:
            reply = {"ok": False, "kind": "file", "error": str(exc)}
        except Exception as exc:
            reply = {"ok": False, "kind": "predict", "error": _describe(exc)}
        item.table = None  # let the chunk's rows go before waiting for the next
        frames_out.write(encode_message(reply))
        frames_out.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
