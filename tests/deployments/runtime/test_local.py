"""LocalProcessBackend against real ``bentoml serve`` processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
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
    from deployments.runtime.local import _refusal

    refused = (
        "Traceback (most recent call last):\n"
        '  File "src/service.py", line 40, in load_model\n'
        "modelkit.allowlist.GlobalRefusedError: posix.system is not on the allow-list\n"
        "2026-12-07 INFO worker restarting"
    )
    assert _refusal(refused) == (
        "modelkit.allowlist.GlobalRefusedError: posix.system is not on the allow-list"
    )
    assert _refusal("skops.io.exceptions.UntrustedTypesFoundException: ['x.Y']")
    # A broken file or a bug may be transient or the deadline's to judge: not a refusal.
    assert _refusal("_pickle.UnpicklingError: invalid load key, 'x'.") == ""
    assert _refusal("NotGlobalRefusedErrorAtAll: no") == ""
    assert _refusal("") == ""


# --- CPU priority of a shadow's slot ---------------------------------------------------------

_PRIORITY_PROBE = (
    "import os, time\n"
    # Empty outside the root CPU cgroup (a container's): no autogroup applies there.
    "fields = open('/proc/self/autogroup').read().split() "
    "if os.path.exists('/proc/self/autogroup') else []\n"
    "group = fields[-1] if fields else '-'\n"
    "print(os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0), group, flush=True)\n"
    "time.sleep(float(os.environ.get('PROBE_SLEEP', '0')))\n"
)


def _wrapped_probe(tmp_path, *, own_session: bool, sleep: float = 0) -> subprocess.Popen[str]:
    """The slot wrapper (_EXIT_NOTE_SCRIPT) of a low-priority slot around a probe that prints
    its nice value, scheduling policy and autogroup nice."""
    from deployments.runtime.local import _EXIT_NOTE_SCRIPT

    env = {
        **os.environ,
        "MODELYARD_SLOT_PRIORITY": f"low:{os.getsid(0)}",
        "PROBE_SLEEP": str(sleep),
    }
    argv = [sys.executable, "-c", _EXIT_NOTE_SCRIPT, str(tmp_path / "note.json")]
    return subprocess.Popen(
        [*argv, sys.executable, "-c", _PRIORITY_PROBE],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=own_session,
    )


def _autogroup_nice(pid: int | str = "self") -> str:
    """The autogroup nice of ``pid``; "-" without one (no file, or outside the root CPU
    cgroup, where the file reads empty)."""
    path = Path(f"/proc/{pid}/autogroup")
    fields = path.read_text().split() if path.exists() else []
    return fields[-1] if fields else "-"


def test_a_low_slot_runs_its_server_at_nice_19_idle_and_lowers_only_its_own_session(tmp_path):
    for own_session in (True, False):
        probe = _wrapped_probe(tmp_path, own_session=own_session)
        out, _ = probe.communicate(timeout=30)
        nice, policy, group = out.split()
        assert int(nice) == 19
        if hasattr(os, "SCHED_IDLE"):
            assert int(policy) == os.SCHED_IDLE
        if own_session and group != "-":
            assert group == "19"  # its session's autogroup weighs as little as it does
        elif group != "-":
            assert group == _autogroup_nice()  # the supervisor's session is left alone


@pytest.mark.skipif(os.geteuid() != 0, reason="raising a priority needs CAP_SYS_NICE")
def test_a_low_slot_gets_normal_priority_back_in_place(tmp_path):
    from deployments.runtime.local import _process_priority

    probe = _wrapped_probe(tmp_path, own_session=True, sleep=30)
    try:
        assert probe.stdout is not None
        assert probe.stdout.readline().split()[0] == "19"
        server = psutil.Process(probe.pid).children()[0]
        for proc in (psutil.Process(probe.pid), server):
            _process_priority(proc.pid, "normal")
            assert proc.nice() == 0
            if hasattr(os, "SCHED_OTHER"):
                assert os.sched_getscheduler(proc.pid) == os.SCHED_OTHER
        assert _autogroup_nice(server.pid) in ("0", "-")
    finally:
        os.killpg(probe.pid, signal.SIGKILL)  # its own session: the wrapper and the server
        probe.wait(timeout=10)
