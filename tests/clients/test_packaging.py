"""The client installs with pip into a fresh venv, and the CI examples are valid and use
only commands and options the CLI has."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
import yaml
from modelyard_client.cli import _parser

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "python"
EXAMPLES = ROOT / "examples" / "ci"
# What the CI variables hold at run time, for parsing the commands offline.
SUBSTITUTE = {
    "${{ steps.push.outputs.ref }}": "churn:3",
    "${{ steps.push.outputs.number }}": "3",
    "$MODEL_REF": "churn:3",
    "$MODEL_VERSION": "3",
}


def test_pip_install_into_a_fresh_venv(tmp_path):
    # Offline: build the wheel with this venv's setuptools (no index, no build isolation),
    # then install it into a venv that has nothing else.
    # A copy of the sources, so the build leaves no build/ in the checkout.
    source = tmp_path / "client"
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index"),
            *("--no-build-isolation", "--wheel-dir", str(wheels), str(source)),
        ],
        check=True,
        capture_output=True,
    )
    fresh = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=True).create(fresh)
    (wheel,) = wheels.glob("modelyard_client-*.whl")
    subprocess.run(
        [str(fresh / "bin" / "python"), "-m", "pip", "install", "--no-index", "--no-deps", wheel],
        check=True,
        capture_output=True,
    )
    # The fresh venv has no httpx (no index to fetch it from here): lend it this venv's
    # site-packages *after* its own, so modelyard_client can only come from the fresh venv.
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": sysconfig.get_paths()["purelib"],
        "PYTHONNOUSERSITE": "1",
    }
    where = subprocess.run(
        [
            str(fresh / "bin" / "python"),
            "-c",
            "import modelyard_client; print(modelyard_client.__file__)",
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(fresh)), where.stdout
    usage = subprocess.run(
        [str(fresh / "bin" / "modelyard"), "--help"], env=env, capture_output=True, text=True
    )
    assert usage.returncode == 0, usage.stderr
    for command in ("push", "wait", "submit", "deploy", "rollback", "batch", "status"):
        assert command in usage.stdout
    requires = subprocess.run(
        [str(fresh / "bin" / "python"), "-m", "pip", "show", "modelyard-client"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Requires: httpx" in requires


def _commands(script: str) -> list[list[str]]:
    for placeholder, value in SUBSTITUTE.items():
        script = script.replace(placeholder, value)
    script = script.replace("\\\n", " ")
    commands = []
    for line in script.splitlines():
        if not line.strip().startswith("modelyard "):
            continue
        lexer = shlex.shlex(line.strip(), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
        shell = [i for i, word in enumerate(words) if word in {">", "|", "&&", ";", "||"}]
        commands.append(words[1 : shell[0] if shell else None])  # up to a redirection
    return commands


def _gitlab_scripts(pipeline: dict) -> list[str]:
    jobs = [
        (name, job) for name, job in pipeline.items() if isinstance(job, dict) and "script" in job
    ]
    assert {job["stage"] for _, job in jobs} <= set(pipeline["stages"])
    ordered = sorted(jobs, key=lambda item: pipeline["stages"].index(item[1]["stage"]))
    return [line for _, job in ordered for line in job["script"]]


@pytest.mark.parametrize("name", ["github-actions.yml", "gitlab-ci.yml"])
def test_ci_example_pushes_waits_for_approval_and_deploys_to_staging(name):
    pipeline = yaml.safe_load((EXAMPLES / name).read_text())
    if name == "github-actions.yml":
        assert pipeline.get("on", pipeline.get(True))  # YAML 1.1 reads a bare `on` as true
        (job,) = pipeline["jobs"].values()
        scripts = [step["run"] for step in job["steps"] if "run" in step]
    else:
        scripts = _gitlab_scripts(pipeline)
    commands = [command for script in scripts for command in _commands(script)]
    parser = _parser()
    for command in commands:
        parser.parse_args(command)  # every option exists; exits (fails the test) if not
    steps = [(c[0], c[c.index("--for") + 1] if "--for" in c else None) for c in commands]
    assert steps == [
        ("push", None),
        ("wait", "validated"),
        ("submit", None),
        ("wait", "approved"),
        ("deploy", None),
    ]
    deploy = commands[-1]
    assert deploy[1] == "churn-staging" and "--json" in commands[0]
