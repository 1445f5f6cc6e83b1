"""What the batch child costs the model, without the rest of the platform.

Run: .venv/bin/python -m devstack test -- -m benchmark -s tests/benchmarks/test_batch_child_bench.py
(prints figures; asserts only correctness, never speed)

The random forest of the throughput benchmark predicts the same 1,000,000 rows, in turn:
- in this process, in one call (what the throughput benchmark compares a job with);
- in this process, chunk by chunk (100,000 and 250,000 rows a call): the model's own fixed
  cost per call;
- in a real batch child (its Bento loaded once), the chunks read from Arrow IPC files and
  sent two at a time as a worker does: the child's own cost on top of chunking.
Rounds alternate the set-ups; the medians of the model's CPU time are printed (the child
reports its own), beside the child's wall time per job of chunks.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from batch.engine import runner
from deployments.models import Build
from deployments.services import LocalBento
from tests.batch.conftest import batch_bentos, batch_setup, input_frame  # noqa: F401 - fixtures
from tests.benchmarks.test_batch_bench import ROWS, _forest_version

pytestmark = [pytest.mark.benchmark]

ROUNDS = 5


def _staged(table: pa.Table, folder: Path, rows: int) -> list[tuple[Path, int]]:
    """The input staged as a job stages it: one Arrow IPC file per chunk."""
    staged = []
    for index, batch in enumerate(table.combine_chunks().to_batches(max_chunksize=rows)):
        path = folder / f"input-{rows}-{index:06d}.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
            writer.write_batch(batch)
        staged.append((path, batch.num_rows))
    return staged


def _child_run(child: runner.BatchChild, staged: list[tuple[Path, int]], folder: Path):
    """Every chunk through the child, two in flight; (model CPU, wall, predictions)."""
    cpu, sent, replies, outputs = 0.0, 0, 0, []
    started = time.perf_counter()
    while replies < len(staged):
        while sent < len(staged) and sent - replies < 2:
            output = folder / f"output-{time.monotonic_ns()}.arrow"
            path, rows = staged[sent]
            child.chunk_send(
                input_path=path,
                batch_index=0,
                rows=rows,
                output_path=output,
                id_column="row_id",
                probabilities=False,
            )
            outputs.append(output)
            sent += 1
        cpu += child.chunk_reply(timeout=120)["timings"]["predict_cpu"]
        replies += 1
    wall = time.perf_counter() - started
    predictions = []
    for output in outputs:
        with pa.memory_map(str(output)) as mapped:
            predictions.append(pa.ipc.open_file(mapped).read_all().column("prediction").to_numpy())
        output.unlink()
    return cpu, wall, np.concatenate(predictions)


def test_the_child_costs_the_model_nothing_beyond_chunking(batch_setup, bento_dirs):  # noqa: F811
    frame = input_frame(ROWS)
    features = frame.drop(columns="row_id")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = _forest_version(batch_setup, bento_dirs["home"], folder).model
        child = runner.BatchChild(
            bento=LocalBento(
                tag=Build.objects.get(version__number=3).bento_tag, home=bento_dirs["home"]
            ),
            start_timeout=120,
        )
        expected = model.predict(features)
        staged = {rows: _staged(table, folder, rows) for rows in (100_000, 250_000)}

        def in_process(rows: int) -> float:
            started = time.thread_time()
            for start in range(0, ROWS, rows):
                model.predict(features.iloc[start : start + rows])
            return time.thread_time() - started

        figures: dict[str, list[float]] = {}
        try:
            for _ in range(ROUNDS):
                figures.setdefault("in process, one call", []).append(in_process(ROWS))
                for rows, chunks in staged.items():
                    figures.setdefault(f"in process, {rows:,} a call", []).append(in_process(rows))
                    cpu, wall, predictions = _child_run(child, chunks, folder)
                    assert np.array_equal(predictions, expected)
                    figures.setdefault(f"child, {rows:,} a chunk", []).append(cpu)
                    figures.setdefault(f"child, {rows:,} a chunk (wall)", []).append(wall)
        finally:
            child.stop()
    base = statistics.median(figures["in process, one call"])
    lines = [f"\nrandom forest, {ROWS:,} rows, medians of {ROUNDS} rounds (model CPU seconds):"]
    for label, values in figures.items():
        mid = statistics.median(values)
        lines.append(f"  {label:34s} {mid:6.3f} s = {mid / base:.3f}x one call")
    print("\n".join(lines), file=sys.stderr)
