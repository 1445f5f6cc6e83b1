"""python -m devstack {test,run,env} — see devstack/__init__.py."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile

from devstack.services import DATA, ROOT, children_stop, stack_start

PYTHON = sys.executable


def _env(stack, settings: str) -> dict[str, str]:
    env = os.environ.copy()
    env.update(stack.env())
    env["DJANGO_SETTINGS_MODULE"] = settings
    # The Procfile says `python`: make it this interpreter (the venv), not the system one.
    env["PATH"] = os.pathsep.join([os.path.dirname(PYTHON), env.get("PATH", "")])
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    return env


def cmd_test(args: list[str]) -> int:
    stack = stack_start(database="modelyard", redis_db=9, prefer_local=True)
    try:
        for line in stack.started:
            print(f"devstack: started {line}", flush=True)
        print(f"devstack: database {stack.database_url} | redis {stack.redis_url}", flush=True)
        env = _env(stack, "config.settings.test")
        # CI runs on a machine whose PostgreSQL may keep a test database from an older
        # schema: never reuse it there.
        fresh = ["--create-db"] if os.environ.get("CI") else []
        with tempfile.TemporaryDirectory(prefix="modelyard-test-artifacts-") as artifacts:
            env.setdefault("MODELYARD_TEST_MEDIA_ROOT", artifacts)
            return subprocess.call([PYTHON, "-m", "pytest", *fresh, *args], env=env, cwd=ROOT)
    finally:
        stack.stop()


def cmd_run(args: list[str]) -> int:
    # Explicit handlers: a shell may start us with SIGINT ignored (background jobs), and
    # Ctrl-C must always end in the orderly shutdown of `finally` below.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    stack = stack_start(database="modelyard", redis_db=0, prefer_local=False, persist=True)
    procs: list[subprocess.Popen] = []

    def stop(*_: object) -> None:
        children_stop([p.pid for p in procs])
        stack.stop()

    try:
        env = _env(stack, "config.settings.local")
        manage = [PYTHON, str(ROOT / "manage.py")]
        subprocess.run([*manage, "migrate", "--no-input", "-v", "0"], env=env, check=True)
        subprocess.run([*manage, "collectstatic", "--no-input", "-v", "0"], env=env, check=True)
        subprocess.run([*manage, "seed_demo"], env=env, check=True)
        # honcho runs the Procfile (web, worker, beat, ...) with prefixed, coloured output.
        procs.append(
            subprocess.Popen(
                [
                    PYTHON,
                    "-m",
                    "honcho",
                    "-f",
                    str(ROOT / "platform" / "Procfile"),
                    "-d",
                    str(ROOT),
                    "start",
                ],
                env=env,
                start_new_session=True,
            )
        )
        print(
            "\nModelyard is starting at http://127.0.0.1:8000/  (Ctrl-C stops everything)\n"
            f"Demo logins: {DATA / 'demo-logins.txt'}\n",
            flush=True,
        )
        return procs[0].wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop()


def cmd_env(args: list[str]) -> int:
    stack = stack_start(database="modelyard", redis_db=0, prefer_local=True)
    for key, value in stack.env().items():
        print(f"export {key}='{value}'")
    return 0


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(prog="python -m devstack")
    parser.add_argument("command", choices=["test", "run", "env"])
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    ns = parser.parse_args()
    rest = ns.rest[1:] if ns.rest[:1] == ["--"] else ns.rest
    return {"test": cmd_test, "run": cmd_run, "env": cmd_env}[ns.command](rest)


if __name__ == "__main__":
    sys.exit(main())
