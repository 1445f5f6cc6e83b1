"""The README's commands, verbatim, against `make run` with the demo seeded.

The blocks tagged ```sh beside-make-run are what a user types in a second terminal: users
and tokens, the CI script (upload of examples/, review, alias), a deployment with its key,
rollout and prediction, and a rollout and rollback of the demo's churn-prod. They run as
one bash script; the only change is the ports, since this stack cannot take 8000/8001.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import httpx

from tests.devstack.conftest import ROOT

README = ROOT / "README.md"
BLOCK = re.compile(r"^```sh beside-make-run\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def readme_blocks() -> list[str]:
    return BLOCK.findall(README.read_text())


def _demo_rollout_done(make_run, timeout: float = 300) -> None:
    """The README's rollback block starts where the demo leaves churn-prod: v1 live."""
    token = make_run.manage("adduser", "readme-watch", "--role", "viewer", "--token")
    headers = {"Authorization": f"Token {token.stdout.strip().splitlines()[-1]}"}
    deadline = time.monotonic() + timeout
    while True:
        body = httpx.get(
            f"{make_run.url}/api/v1/deployments/churn-prod/", headers=headers, timeout=30
        ).json()
        current = body.get("current_rollout")  # an active or baking rollout, else None
        if body.get("live_version") == 1 and (current is None or current["state"] == "baking"):
            return
        assert time.monotonic() < deadline, body
        time.sleep(2)


def test_the_readme_starts_with_the_two_commands():
    first = README.read_text().split("```sh\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split("#")[0].strip() for line in first] == ["make run", "make test"]


def test_the_readme_defines_every_variable_it_uses():
    script = "\n".join(readme_blocks())
    used = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", script))
    defined = set(re.findall(r"(?:^|[\s;(])([A-Z_][A-Z0-9_]*)=", script, re.MULTILINE))
    assert used and used <= defined, f"used but never defined: {sorted(used - defined)}"


def test_the_readme_runs_verbatim_beside_make_run(make_run):
    blocks = readme_blocks()
    assert len(blocks) >= 4, "the README lost its tagged blocks"
    script = "\n".join(blocks)
    script = script.replace("127.0.0.1:8000", f"127.0.0.1:{make_run.web_port}")
    script = script.replace("127.0.0.1:8001", f"127.0.0.1:{make_run.gateway_port}")
    _demo_rollout_done(make_run)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-x", "-c", script],
        cwd=ROOT,
        env=make_run.env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n---\n{result.stderr[-5000:]}"
    out = result.stdout
    # curl prints no newline after a body: what follows it shares its line.
    # The predict answer: labels, probabilities in the order of "classes", the version.
    # The gateway adds the answer's inference id before the closing brace.
    answers = re.findall(
        r'(\{"predictions": ?.*?"model_version": ?\d+(?:,"inference_id":"[^"]+")?\})', out
    )
    assert answers, out
    answer = json.loads(answers[0])
    assert answer["predictions"][0] in (0, 1) and answer["classes"] == [0, 1], out
    assert abs(sum(answer["probabilities"][0]) - 1.0) < 1e-9, out
    states = re.findall(r"(?:^|\})(validated|invalid|baking|live|failed)$", out, re.MULTILINE)
    assert states[0] == "validated" and len(states) == 4, out
    assert "failed" not in states, out
    # The demo's churn-prod went to v2 and back: v1 is live again; then a canary of v2 took
    # its first step (5 %) and was aborted.
    assert out.strip().splitlines()[-4:] == ["1", "canary", "5", "aborted"], out[-2000:]
