"""Real models of every framework, validated in the real sandbox child and built into real
Bentos; served one at a time by the real local backend, batch-predicted by the real child.

Everything is module-scoped and built once per model and variant (with reference data that
has a NaN in its first row and zip codes that look numeric, and without reference data).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from batch.engine._child import encode_message, read_message
from deployments.integrations.bentoml import BuildResult, _bento_dir, bento_build
from deployments.runtime.local import LocalProcessBackend
from registry.validation.formats import detect_format
from registry.validation.sandbox import LoadReport, SandboxLimits, sandbox_load_and_predict
from tests.models import ContractCase, contract_cases

BATCH_CHILD = Path(__file__).resolve().parents[2] / "batch" / "engine" / "_child.py"


@dataclass
class Prepared:
    case: ContractCase
    variant: str
    report: LoadReport
    build: BuildResult | None = None


@pytest.fixture(scope="session")
def cases() -> dict[str, ContractCase]:
    return contract_cases()


@pytest.fixture(scope="module")
def contract_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("contract-home")


@pytest.fixture(scope="module")
def prepare(cases, contract_home, tmp_path_factory):
    """prepare(case name, "reference" | "none") → validated (and built) once per module."""
    files = tmp_path_factory.mktemp("contract-files")
    done: dict[tuple[str, str], Prepared] = {}
    versions: dict[str, int] = {}

    def _prepare(name: str, variant: str, build: bool = True) -> Prepared:
        key = (name, variant)
        if key in done:
            return done[key]
        case = cases[name]
        artifact = files / f"{name}-{case.filename}"
        artifact.write_bytes(case.artifact)
        sample = None
        if variant == "reference":
            sample = files / f"{name}-reference.csv"
            sample.write_bytes(case.reference_csv(nan_first=True))
        metadata = case.metadata or {}
        report = sandbox_load_and_predict(
            artifact_path=artifact,
            fmt=detect_format(artifact, case.framework),
            sample_path=sample,
            limits=SandboxLimits(timeout_seconds=120),
            class_labels=metadata.get("class_labels"),
        )
        prepared = Prepared(case, variant, report)
        if build and report.ok:
            versions[name] = versions.get(name, 0) + 1
            prepared.build = bento_build(
                home=contract_home,
                model_name=name.replace("_", "-"),
                version=versions[name],
                artifact_path=artifact,
                framework=case.framework,
                fmt=report.contract["format"],
                feature_names=report.feature_names,
                contract=report.contract,
                log_path=files / f"{name}-{variant}.log",
            )
        done[key] = prepared
        return prepared

    return _prepare


@pytest.fixture(scope="module")
def contract_backend(contract_home, tmp_path_factory):
    backend = LocalProcessBackend(
        contract_home, tmp_path_factory.mktemp("contract-serving"), ready_timeout=90
    )
    yield backend
    for status in backend.slots():
        backend.slot_stop(slot_key=status.slot_key)


def batch_predict(home: Path, bento_tag: str, tables: list[pa.Table], workdir: Path) -> list[Any]:
    """Chunks through one real batch child (batch/engine/_child.py) on the built Bento."""
    env = {"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True", "PATH": "/usr/bin:/bin"}
    child = subprocess.Popen(
        [sys.executable, str(BATCH_CHILD), str(_bento_dir(home, bento_tag))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    outputs = []
    try:
        ready, _ = read_message(child.stdout)
        assert ready.get("ok"), ready
        for index, table in enumerate(tables):
            staged, output = workdir / f"chunk-{index}.arrow", workdir / f"out-{index}.arrow"
            with (
                pa.OSFile(str(staged), "wb") as sink,
                pa.ipc.new_file(sink, table.schema) as writer,
            ):
                writer.write_table(table.combine_chunks())
            spec = {"input": str(staged), "batch": 0, "rows": table.num_rows}
            chunk = {**spec, "output": str(output), "probabilities": True}
            child.stdin.write(encode_message({"chunk": chunk}))
            child.stdin.flush()
            reply, _ = read_message(child.stdout)
            assert reply.get("ok"), reply
            with pa.memory_map(str(output)) as mapped:
                outputs.append(pa.ipc.open_file(mapped).read_all().to_pandas())
    finally:
        child.stdin.close()
        child.wait(timeout=60)
    return outputs


def staged_table(version: Any, path: Path, fmt: str) -> pa.Table:
    """An input file read exactly as batch staging reads it (batch/services/inputs.py)."""
    from batch.services.inputs import _batches, input_header, input_plan

    with open(path, "rb") as handle:
        found, header = input_header(handle)
        assert found == fmt
        plan = input_plan(version=version, header=header, id_column="")
        batches = list(_batches(handle, fmt, plan, header))
    return pa.Table.from_batches(batches)


__all__ = ["batch_predict", "pacsv", "pq", "staged_table"]
