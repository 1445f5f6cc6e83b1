"""Ctrl-C on `make run`: everything stops in order and nothing is left; a restart resumes the
demo, with the clean stop recorded as a stop and the demo's gateway key kept."""

from __future__ import annotations

import time

import httpx

ORDER = [
    "stopping web, worker, beat, gateway",
    "stopping the slot servers",
    "stopping the embedded Redis and PostgreSQL",
    "stopped",
]


def _demo_key(make_run) -> str:
    lines = (make_run.data / "demo-logins.txt").read_text().splitlines()
    return next(line for line in lines if line.startswith("gateway key for churn-prod: ")).split()[
        -1
    ]


def _predict_until_ok(make_run, key: str, timeout: float = 300) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = httpx.post(
                f"{make_run.gateway}/d/churn-prod/predict",
                headers={"Authorization": f"Bearer {key}"},
                json={
                    "instances": [
                        {
                            "tenure_months": 3,
                            "monthly_charges": 90,
                            "support_calls": 5,
                            "contract_years": 0,
                        }
                    ]
                },
                timeout=10,
            )
            if response.status_code == 200 or time.monotonic() > deadline:
                return response
        except httpx.HTTPError:
            assert time.monotonic() < deadline
        time.sleep(1)


def _event_kinds(make_run) -> list[str]:
    result = make_run.manage(
        "shell",
        "-c",
        "from deployments.models import DeploymentEvent as E\n"
        "print(' '.join(E.objects.filter(deployment__name='churn-prod')"
        ".order_by('id').values_list('kind', flat=True)))",
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1].split()


def test_ctrl_c_stops_in_order_and_a_restart_keeps_the_demo(make_run):
    key = _demo_key(make_run)
    assert _predict_until_ok(make_run, key).status_code == 200  # a slot server is running
    assert any("bentoml" in " ".join(p.cmdline()) for p in make_run.processes())
    log_before = len(make_run.log.read_text())

    assert make_run.interrupt() == 0
    lines = make_run.devstack_lines()
    positions = [lines.index(step) for step in ORDER]
    assert positions == sorted(positions), lines
    # Every process exited on its SIGTERM before the slot servers, Redis and PostgreSQL went.
    for name in ("web", "worker", "beat", "gateway"):
        assert positions[0] < lines.index(f"{name} stopped") < positions[1], lines
    assert any("stopped: make run stopped" in line for line in lines[positions[1] :]), lines
    assert not any("SIGKILL" in line for line in lines), lines
    stop_log = make_run.log.read_text()[log_before:]
    assert "Traceback" not in stop_log and "WorkerLostError" not in stop_log, stop_log[-4000:]
    # Nothing of the stack is left: no slot server, no Redis, no PostgreSQL, no stack file.
    deadline = time.monotonic() + 10
    while make_run.processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [p.cmdline() for p in make_run.processes()] == []
    assert not (make_run.data / "stack.env").exists()
    # Quiet periodic logs: beat's routine lines are not printed at INFO.
    assert "Sending due task" not in make_run.log.read_text()

    make_run.start()
    assert _demo_key(make_run) == key  # kept in demo-logins.txt across the restart
    assert _predict_until_ok(make_run, key, timeout=180).status_code == 200
    # The routes survive in the embedded Redis's append-only file, so the gateway may answer
    # as soon as the slot server is back, before the sweep that restarted it records so.
    # The server is started again by whichever comes first: the sweep (slot_restarted) or
    # the gateway's repair request for the upstream it found refusing (replica_repaired).
    restarted = {"slot_restarted", "replica_repaired"}
    deadline = time.monotonic() + 60
    while True:
        kinds = _event_kinds(make_run)
        last_stop = len(kinds) - 1 - kinds[::-1].index("slot_stopped")
        if restarted & set(kinds[last_stop:]) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert "slot_crashed" not in kinds, kinds
    assert restarted & set(kinds[last_stop:]), kinds
