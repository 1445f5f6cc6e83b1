"""LocalProcessBackend against real ``bentoml serve`` processes."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from deployments.integrations.bentoml import bento_build, bento_delete
from deployments.runtime.base import SlotNotFound, SlotStartError

from .conftest import FEATURES, serving_processes


def predict(url: str, rows: list) -> dict:
    response = httpx.post(f"{url}/predict", json={"instances": rows}, timeout=30, trust_env=False)
    assert response.status_code == 200, response.text
    return response.json()


def pids(procs: list[psutil.Process]) -> set[int]:
    return {proc.pid for proc in procs}


def wait_dead(pid: int) -> None:
    """Until the killed process is really gone (a signal is delivered asynchronously)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} survived SIGKILL")


def arbiter_of(pid: int) -> psutil.Process:
    """BentoML's arbiter: the child of the parent that notes how the server ended."""
    deadline = time.monotonic() + 10
    while not psutil.Process(pid).children():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return psutil.Process(pid).children()[0]


def all_gone(procs: list[psutil.Process]) -> bool:
    # is_running() compares the start time too, so a reused PID does not count as alive.
    return not any(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE for proc in procs)


def test_started_slot_serves_and_a_second_start_is_a_noop(backend, store, training_data):
    matrix, _ = training_data
    handle = backend.slot_start(slot_key="scorer.blue", bento_tag=store["v1"])
    assert handle.url == f"http://127.0.0.1:{handle.port}"
    body = predict(handle.url, matrix[:20].tolist())
    assert body["predictions"] == store["models"][1].predict(matrix[:20]).tolist()
    assert body["model_version"] == 1
    named = [dict(zip(FEATURES, row, strict=True)) for row in matrix[:5].tolist()]
    assert predict(handle.url, named)["predictions"] == body["predictions"][:5]

    before = pids(serving_processes(backend.state_dir))
    assert len(before) == 3  # the exit-noting parent, the arbiter and its one worker
    again = backend.slot_start(slot_key="scorer.blue", bento_tag=store["v1"])
    assert again == handle
    assert pids(serving_processes(backend.state_dir)) == before

    status = backend.slot_status(slot_key="scorer.blue")
    assert (status.running, status.ready, status.restarts) == (True, True, 0)
    assert status.last_event.kind == "started"
    assert [s.slot_key for s in backend.slots()] == ["scorer.blue"]

    sample = backend.slot_resources(slot_key="scorer.blue")
    assert sample.process_count == 3
    assert sample.cpu_seconds > 0
    assert sample.rss_bytes > 50 * 1024 * 1024  # two Python processes with sklearn loaded


def test_stop_leaves_no_process_of_the_tree(backend, store):
    backend.slot_start(slot_key="scorer.green", bento_tag=store["v1"])
    tree = serving_processes(backend.state_dir)
    assert len(tree) == 3
    backend.slot_stop(slot_key="scorer.green")
    assert all_gone(tree)
    assert serving_processes(backend.state_dir) == []
    with pytest.raises(SlotNotFound):
        backend.slot_status(slot_key="scorer.green")
    backend.slot_stop(slot_key="scorer.green")  # stopping a stopped slot is harmless


def test_start_with_another_bento_replaces_the_server(backend, store, training_data):
    matrix, _ = training_data
    first = backend.slot_start(slot_key="scorer.blue", bento_tag=store["v1"])
    old_tree = serving_processes(backend.state_dir)
    second = backend.slot_start(slot_key="scorer.blue", bento_tag=store["v2"])
    assert second.pid != first.pid
    assert all_gone(old_tree)
    assert len(serving_processes(backend.state_dir)) == 3
    body = predict(second.url, matrix[:20].tolist())
    assert body["model_version"] == 2
    assert body["predictions"] == store["models"][2].predict(matrix[:20]).tolist()


def test_killed_server_is_restarted_by_supervision(backend, store, training_data):
    matrix, _ = training_data
    handle = backend.slot_start(slot_key="scorer.blue", bento_tag=store["v1"])
    arbiter = arbiter_of(handle.pid)
    worker = next(
        p for p in serving_processes(backend.state_dir) if p.pid not in (handle.pid, arbiter.pid)
    )

    os.kill(arbiter.pid, signal.SIGKILL)
    wait_dead(arbiter.pid)
    # The BentoML trap this backend guards against: the worker outlives its arbiter.
    assert worker.is_running()
    # The started process notes the exit status and ends a moment later; a sweep before that
    # still sees it running (the next one acts), on a slow machine this one might.
    if handle.pid != arbiter.pid:
        wait_dead(handle.pid)

    events = backend.supervise_once()
    assert [event.kind for event in events] == ["crashed", "restarted"]
    assert "killed by signal 9 (SIGKILL)" in events[0].message, events[0].message
    assert not worker.is_running()  # the orphaned worker was killed, not left serving
    status = backend.slot_status(slot_key="scorer.blue")
    assert (status.running, status.ready, status.restarts) == (True, True, 1)
    assert status.last_event.kind == "restarted"
    assert status.pid != handle.pid
    assert status.url == handle.url  # the same port again, so routes stay valid
    assert len(serving_processes(backend.state_dir)) == 3
    assert predict(status.url, matrix[:3].tolist())["model_version"] == 1

    assert backend.supervise_once() == []  # healthy now: nothing to report


def test_new_backend_instance_adopts_running_slot_without_a_duplicate(make_backend, store):
    first = make_backend()
    handle = first.slot_start(slot_key="scorer.blue", bento_tag=store["v1"])
    before = pids(serving_processes(first.state_dir))

    successor = make_backend()  # e.g. the supervising process restarted
    events = successor.supervise_once()
    assert [(event.kind, event.slot_key) for event in events] == [("adopted", "scorer.blue")]
    assert successor.supervise_once() == []
    assert successor.slot_start(slot_key="scorer.blue", bento_tag=store["v1"]) == handle
    assert pids(serving_processes(first.state_dir)) == before
    assert successor.slot_status(slot_key="scorer.blue").ready


def test_new_backend_instance_restarts_a_slot_that_died_unsupervised(make_backend, store):
    first = make_backend()
    first.slot_start(slot_key="scorer.blue", bento_tag=store["v1"])
    tree = serving_processes(first.state_dir)
    for proc in tree:
        proc.kill()  # the whole tree, e.g. the machine's OOM killer
    psutil.wait_procs(tree, timeout=10)

    successor = make_backend()
    events = successor.supervise_once()
    assert [event.kind for event in events] == ["crashed", "restarted"]
    assert successor.slot_status(slot_key="scorer.blue").ready


def test_supervision_kills_processes_of_a_slot_it_has_no_record_of(backend, store):
    backend.slot_start(slot_key="scorer.blue", bento_tag=store["v1"])
    tree = serving_processes(backend.state_dir)
    # As if the supervisor died between spawning a server and recording it.
    (backend.state_dir / "slots" / "scorer.blue.json").unlink()

    events = backend.supervise_once()
    assert [event.kind for event in events] == ["orphans_killed"]
    assert all_gone(tree)


def test_restart_failures_back_off(make_backend, store, tmp_path):
    import joblib

    joblib.dump(store["models"][1], tmp_path / "v9.joblib")
    tag = bento_build(
        home=store["home"],
        model_name="scorer",
        version=9,
        artifact_path=tmp_path / "v9.joblib",
        framework="sklearn",
        fmt="joblib",
        feature_names=None,
        log_path=tmp_path / "build.log",
    ).bento_tag
    backend = make_backend(backoff_base=30)
    handle = backend.slot_start(slot_key="scorer.blue", bento_tag=tag)
    assert bento_delete(home=store["home"], bento_tag=tag)
    os.kill(handle.pid, signal.SIGKILL)
    wait_dead(handle.pid)

    events = backend.supervise_once()
    # First crash: restarted at once — which fails fast, the Bento being gone.
    assert [event.kind for event in events] == ["crashed", "restart_failed"]
    assert "is not built in the store" in events[1].message
    assert "next attempt in 30 s" in events[1].message
    # Second consecutive failure: the next attempt waits, so this round does nothing.
    assert backend.supervise_once() == []
    status = backend.slot_status(slot_key="scorer.blue")
    assert (status.running, status.restarts, status.last_event.kind) == (False, 0, "restart_failed")
    backend.slot_stop(slot_key="scorer.blue")


def test_model_that_cannot_load_hits_the_readiness_deadline(make_backend, store):
    backend = make_backend(ready_timeout=8)
    started = time.monotonic()
    with pytest.raises(SlotStartError) as raised:
        backend.slot_start(slot_key="broken.blue", bento_tag=store["broken"])
    assert time.monotonic() - started < 30
    first_line = str(raised.value).splitlines()[0]
    assert "did not answer /readyz with 200 within 8 s" in first_line
    # It says why: the exception the service's __init__ raised unpickling the file...
    assert re.search(r"\w+Error: ", first_line), first_line
    # ...and the log tail shows where.
    assert "load_model" in raised.value.log_tail
    assert serving_processes(backend.state_dir) == []
    assert backend.slots() == []


def test_unbuilt_bento_and_bad_slot_keys_are_refused(backend):
    with pytest.raises(SlotStartError, match="Bento scorer:v404 is not built"):
        backend.slot_start(slot_key="scorer.blue", bento_tag="scorer:v404")
    with pytest.raises(ValueError, match="slot key"):
        backend.slot_start(slot_key="../escape", bento_tag="scorer:v1")


def test_slot_serving_answers_from_the_record_without_probing(backend, store):
    """The rollback's warm check: same Bento, our process alive, not marked unready."""
    assert backend.slot_serving(slot_key="scorer.blue", bento_tag=store["v1"]) is False
    handle = backend.slot_start(slot_key="scorer.blue", bento_tag=store["v1"])
    assert backend.slot_serving(slot_key="scorer.blue", bento_tag=store["v1"]) is True
    assert backend.slot_serving(slot_key="scorer.blue", bento_tag=store["v2"]) is False
    # Answered from the record alone: a server that stops answering HTTP (its whole tree
    # SIGSTOPped) still counts until the supervisor's probe marks it unready.
    tree = serving_processes_of(handle.pid)
    for proc in tree:
        proc.suspend()
    try:
        started = time.monotonic()
        assert backend.slot_serving(slot_key="scorer.blue", bento_tag=store["v1"]) is True
        assert time.monotonic() - started < 0.5
        backend.supervise_once()  # its /readyz probe fails: the record says unready since now
        assert backend.slot_serving(slot_key="scorer.blue", bento_tag=store["v1"]) is False
    finally:
        for proc in tree:
            proc.resume()
    backend.supervise_once()  # answers again: unready mark cleared
    assert backend.slot_serving(slot_key="scorer.blue", bento_tag=store["v1"]) is True
    for proc in serving_processes_of(handle.pid):
        proc.kill()
    wait_dead(handle.pid)
    assert backend.slot_serving(slot_key="scorer.blue", bento_tag=store["v1"]) is False


def serving_processes_of(pid: int) -> list[psutil.Process]:
    main = psutil.Process(pid)
    return [*main.children(recursive=True), main]


def test_a_loader_refusal_in_the_log_is_told_apart_from_other_failures():
    from deployments.runtime.local_state import log_refusal

    refused = (
        "Traceback (most recent call last):\n"
        '  File "src/service.py", line 40, in load_model\n'
        "modelkit.allowlist.GlobalRefusedError: posix.system is not on the allow-list\n"
        "2026-12-07 INFO worker restarting"
    )
    assert log_refusal(refused) == (
        "modelkit.allowlist.GlobalRefusedError: posix.system is not on the allow-list"
    )
    assert log_refusal("skops.io.exceptions.UntrustedTypesFoundException: ['x.Y']")
    # A broken file or a bug may be transient or the deadline's to judge: not a refusal.
    assert log_refusal("_pickle.UnpicklingError: invalid load key, 'x'.") == ""
    assert log_refusal("NotGlobalRefusedErrorAtAll: no") == ""
    assert log_refusal("") == ""


# --- CPU priority of a shadow's slot ---------------------------------------------------------


def _autogroup_nice(pid: int | str = "self") -> str:
    """The autogroup nice of ``pid``; "-" without one (no file, or outside the root CPU
    cgroup, where the file reads empty)."""
    path = Path(f"/proc/{pid}/autogroup")
    fields = path.read_text().split() if path.exists() else []
    return fields[-1] if fields else "-"


def _priorities(procs: list[psutil.Process]) -> set[tuple[int, int, str]]:
    """(nice, scheduling policy, autogroup nice) of each process."""
    return {
        (proc.nice(), os.sched_getscheduler(proc.pid), _autogroup_nice(proc.pid)) for proc in procs
    }


def test_a_low_slot_runs_at_nice_19_idle_once_ready_and_gets_normal_back_in_place(
    backend, store, training_data
):
    """Started at normal priority (a SCHED_IDLE start beside a busy live slot would miss its
    readiness deadline), lowered once ready: every process of its tree, its own session's
    autogroup too, never ours."""
    matrix, _ = training_data
    ours = _autogroup_nice()
    handle = backend.slot_start(slot_key="scorer.green", bento_tag=store["v1"], priority="low")
    tree = serving_processes(backend.state_dir)
    assert len(tree) == 3
    assert _priorities(tree) <= {(19, os.SCHED_IDLE, "19"), (19, os.SCHED_IDLE, "-")}
    assert _autogroup_nice() == ours
    assert predict(handle.url, matrix[:3].tolist())["model_version"] == 1
    if os.geteuid() != 0:
        return  # raising it in place needs CAP_SYS_NICE (the refused path: the next test)
    backend.slot_priority(slot_key="scorer.green", priority="normal")
    assert pids(serving_processes(backend.state_dir)) == pids(tree)  # in place, no restart
    assert _priorities(tree) <= {(0, os.SCHED_OTHER, "0"), (0, os.SCHED_OTHER, "-")}


def test_a_low_slot_whose_raise_is_refused_is_restarted_at_normal_priority(
    backend, store, training_data, monkeypatch
):
    """Without CAP_SYS_NICE the kernel refuses raising a priority: the promoted shadow's
    server is restarted at normal priority on its port instead of serving users from idle
    CPU."""
    import deployments.runtime.local as local

    matrix, _ = training_data
    handle = backend.slot_start(slot_key="scorer.green", bento_tag=store["v1"], priority="low")
    assert psutil.Process(handle.pid).nice() == 19
    lowered = local._process_priority

    def unprivileged(pid: int, priority: str) -> None:
        if priority == "normal":
            raise PermissionError(1, "Operation not permitted")
        lowered(pid, priority)

    monkeypatch.setattr(local, "_process_priority", unprivileged)
    backend.slot_priority(slot_key="scorer.green", priority="normal")
    after = backend.slot_start(slot_key="scorer.green", bento_tag=store["v1"])  # no-op now
    assert after.port == handle.port and after.pid != handle.pid
    tree = serving_processes(backend.state_dir)
    assert tree and all(proc.nice() == 0 for proc in tree)
    if hasattr(os, "SCHED_OTHER"):
        assert all(os.sched_getscheduler(proc.pid) == os.SCHED_OTHER for proc in tree)
    assert predict(after.url, matrix[:3].tolist())["model_version"] == 1
