"""Replicas of a slot on the local backend: real ``bentoml serve`` servers, one per replica."""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from deployments.runtime.base import SlotNotFound

from .conftest import serving_processes
from .test_local import all_gone, arbiter_of, predict, wait_dead


def ready_states(status) -> list[tuple[int, str]]:
    return [(replica.index, replica.state) for replica in status.replicas]


def test_slot_runs_its_replicas_on_their_own_ports_and_scales(backend, store, training_data):
    matrix, _ = training_data
    handle = backend.slot_start(slot_key="scorer.blue", bento_tag=store["v1"], replicas=2)
    assert len(set(handle.urls)) == 2 and handle.url == handle.urls[0]
    for url in handle.urls:
        assert predict(url, matrix[:5].tolist())["model_version"] == 1
    status = backend.slot_status(slot_key="scorer.blue")
    assert ready_states(status) == [(0, "ready"), (1, "ready")]
    assert status.ready and status.ready_urls == list(handle.urls)
    assert [s.slot_key for s in backend.slots()] == ["scorer.blue"]  # one slot, two servers
    one = len(serving_processes(backend.state_dir)) // 2
    assert backend.slot_resources(slot_key="scorer.blue").process_count == 2 * one

    up = backend.slot_scale(slot_key="scorer.blue", replicas=3)
    assert up.urls[:2] == handle.urls  # the running ones are left alone
    assert predict(up.urls[2], matrix[:5].tolist())["model_version"] == 1
    assert len(serving_processes(backend.state_dir)) == 3 * one

    procs = serving_processes(backend.state_dir)
    extra = [proc for proc in procs if "@" in proc.environ()["MODELYARD_SLOT"]]
    down = backend.slot_scale(slot_key="scorer.blue", replicas=1)
    assert down.urls == (handle.url,)
    assert all_gone(extra)
    assert len(serving_processes(backend.state_dir)) == one
    assert ready_states(backend.slot_status(slot_key="scorer.blue")) == [(0, "ready")]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{handle.urls[1]}/readyz", timeout=2, trust_env=False)

    backend.slot_stop(slot_key="scorer.blue")
    assert serving_processes(backend.state_dir) == []
    with pytest.raises(SlotNotFound):
        backend.slot_scale(slot_key="scorer.blue", replicas=2)


def test_workers_per_replica_come_from_the_start(backend, store):
    backend.slot_start(slot_key="scorer.blue", bento_tag=store["v1"], workers=2)
    # The exit-noting parent, the arbiter and two workers.
    assert len(serving_processes(backend.state_dir)) == 4
    assert backend.slot_status(slot_key="scorer.blue").workers == 2


def test_supervision_restarts_only_the_dead_replica(backend, store):
    handle = backend.slot_start(slot_key="scorer.blue", bento_tag=store["v1"], replicas=2)
    first = backend.slot_status(slot_key="scorer.blue").replicas
    arbiter = arbiter_of(first[1].pid)
    os.kill(arbiter.pid, signal.SIGKILL)
    wait_dead(arbiter.pid)
    wait_dead(first[1].pid)  # the noting parent ends with its child
    status = backend.slot_status(slot_key="scorer.blue")
    assert ready_states(status) == [(0, "ready"), (1, "dead")]
    assert status.ready_urls == [handle.urls[0]] and not status.ready

    events = backend.supervise_once()
    assert [(event.slot_key, event.kind) for event in events] == [
        ("scorer.blue", "crashed"),
        ("scorer.blue", "restarted"),
    ]
    assert events[0].message.startswith("replica 1: ")
    assert "killed by signal 9 (SIGKILL)" in events[0].message, events[0].message
    after = backend.slot_status(slot_key="scorer.blue").replicas
    assert after[0].pid == first[0].pid  # the healthy replica was not touched
    assert after[1].pid != first[1].pid and after[1].url == first[1].url
    assert [replica.state for replica in after] == ["ready", "ready"]


def test_repair_from_another_process_names_the_signal_once(make_backend, store):
    starter = make_backend()
    handle = starter.slot_start(slot_key="scorer.blue", bento_tag=store["v1"], replicas=2)
    pid = starter.slot_status(slot_key="scorer.blue").replicas[1].pid
    os.kill(arbiter_of(pid).pid, signal.SIGKILL)
    wait_dead(pid)

    # A repair in another worker process: not the server's parent, it reads the note.
    repairer = make_backend()
    event = repairer.replica_repair(slot_key="scorer.blue", url=handle.urls[1])
    assert event is not None and event.kind == "repaired"
    assert "killed by signal 9 (SIGKILL)" in event.message, event.message
    assert "restarted in" in event.message
    assert repairer.replica_repair(slot_key="scorer.blue", url=handle.urls[1]) is None
    assert repairer.replica_repair(slot_key="scorer.blue", url=handle.urls[0]) is None
    assert [r.state for r in repairer.slot_status(slot_key="scorer.blue").replicas] == [
        "ready",
        "ready",
    ]
    with pytest.raises(SlotNotFound):
        repairer.replica_repair(slot_key="scorer.blue", url="http://127.0.0.1:1")


def test_a_servers_batching_comes_from_its_start(tmp_path):
    """What the server is started with: the deployment's batching in its BentoML options."""
    from deployments.runtime.local import LocalProcessBackend
    from deployments.runtime.local_state import SlotRecord

    backend = LocalProcessBackend(home=tmp_path / "home", state_dir=tmp_path / "state")
    record = SlotRecord(
        slot_key="d.blue",
        bento_tag="m:v1",
        host="127.0.0.1",
        port=1,
        workers=3,
        batch_max_size=8,
        batch_max_latency_ms=4,
    )
    start = backend._process_start(record, tmp_path / "slot-home", 1)
    options = start.env["BENTOML_CONFIG_OPTIONS"]
    assert "workers=3" in options and "max_batch_size=8" in options
    assert "max_latency_ms=4" in options
