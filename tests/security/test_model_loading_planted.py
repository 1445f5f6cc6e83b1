"""Bad bytes planted straight into a built Bento's model store, under the recorded loading
decision of a good version: the generated service's ``load_model`` (what the slot server
and the batch child run in their ``__init__``) refuses them through ``modelkit.loading``,
and the payload never runs."""

from __future__ import annotations

import os
from pathlib import Path

import joblib
import numpy as np
import pytest

from batch.engine.runner import BatchChild, ChildError
from deployments.integrations.bentoml import _model_dir, bento_build
from deployments.services import LocalBento
from registry.modelkit.loading import loader_decision
from tests.models import train_sklearn_joblib
from tests.security.test_model_loading import PAYLOADS, _payloads


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A Bento of a good joblib version, in a store of this module's own."""
    folder = tmp_path_factory.mktemp("planted")
    home = folder / "home"
    home.mkdir()
    artifact = folder / "good.joblib"
    artifact.write_bytes(train_sklearn_joblib().artifact)
    result = bento_build(
        home=home,
        model_name="planted",
        version=1,
        artifact_path=artifact,
        framework="sklearn",
        fmt="joblib",
        feature_names=None,
        log_path=folder / "build.log",
        loader=loader_decision("joblib"),
    )
    model_file = _model_dir(home, result.model_tag) / "model.joblib"
    good = model_file.read_bytes()
    yield home, LocalBento(tag=result.bento_tag, home=home), model_file
    model_file.write_bytes(good)


def test_the_good_bento_loads_in_the_batch_child(built):
    _, bento, _ = built
    child = BatchChild(bento=bento, start_timeout=120)
    try:
        assert child.info["ok"] and child.info["native"]
    finally:
        child.stop()
    service = (bento.path / "src" / "service.py").read_text()
    assert "LOADER: dict[str, Any] = {'format': 'joblib', 'loader': 'restricted-joblib'" in service


def _object_array_exploit(marker: Path) -> bytes:
    import io

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    buffer = io.BytesIO()
    joblib.dump({"coef": np.arange(3.0), "extra": np.array([Exploit()], dtype=object)}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("name", [*PAYLOADS, "object-array"])
def test_batch_child_refuses_a_planted_file_and_its_payload_never_runs(built, tmp_path, name):
    _, bento, model_file = built
    marker = tmp_path / "pwned"
    exploit = _object_array_exploit(marker) if name == "object-array" else None
    model_file.write_bytes(exploit or _payloads(marker)[name][0])

    with pytest.raises(ChildError, match="GlobalRefusedError"):
        BatchChild(bento=bento, start_timeout=120)

    assert not marker.exists()


# The slot server runs the same generated ``__init__`` as the batch child, which takes every
# file above; here one file per way in (plain pickle, compressed joblib, a joblib object
# array) proves the wiring, at ~15 s a server start instead of nine of them.
SLOT_SERVER_PAYLOADS = ["attrgetter-os-system", "zlib-joblib", "object-array"]


@pytest.mark.parametrize("name", SLOT_SERVER_PAYLOADS)
def test_slot_server_refuses_a_planted_file_and_its_payload_never_runs(built, tmp_path, name):
    from deployments.runtime.base import SlotStartError
    from deployments.runtime.local import LocalProcessBackend

    home, bento, model_file = built
    marker = tmp_path / "pwned"
    exploit = _object_array_exploit(marker) if name == "object-array" else None
    model_file.write_bytes(exploit or _payloads(marker)[name][0])
    backend = LocalProcessBackend(home, tmp_path / "serving-state", ready_timeout=30)
    tag = bento.tag
    try:
        with pytest.raises(SlotStartError) as raised:
            backend.slot_start(slot_key="planted.blue", bento_tag=tag)
    finally:
        for status in backend.slots():
            backend.slot_stop(slot_key=status.slot_key, timeout=5)

    assert "GlobalRefusedError" in str(raised.value) + raised.value.log_tail
    # Refused at once, not at the ready deadline: every restart would refuse the same file.
    assert "cannot load its model" in str(raised.value)
    named = "posix.system" if exploit else _payloads(marker)[name][2]
    assert f"{named} is not on the allow-list" in raised.value.log_tail
    assert not marker.exists()
