"""python -m devstack {test,run,env,slots-stop} — see devstack/__init__.py."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time

from devstack.runner import ProcessGroup, say
from devstack.services import DATA, ROOT, Stack, port_open, stack_start, strays_stop
from devstack.stackfile import (
    PID_KEY,
    stack_file,
    stack_file_read,
    stack_file_remove,
    stack_file_write,
)
from gateway.settings import INHERITED_FD_ENV

PYTHON = sys.executable
# What `make run` records for a second terminal (.data/stack.env).
STACK_VARS = (
    "DATABASE_URL",
    "REDIS_URL",
    "MODELYARD_DATA_DIR",
    "MODELYARD_PUBLIC_URL",
    "MODELYARD_GATEWAY_URL",
)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


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


def _ports() -> tuple[int, int]:
    # Other ports for a second stack on one machine (the Procfile reads the same variables).
    return (
        int(os.environ.get("MODELYARD_WEB_PORT", "8000")),
        int(os.environ.get("MODELYARD_GATEWAY_PORT", "8001")),
    )


def _wait_web(url: str, group: ProcessGroup, timeout: float = 120) -> bool:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        group.supervise_once()
        if any(p.restarts or p.restart_at is not None for p in group.procs):
            return False
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code < 500:
                return True
        time.sleep(0.3)
    return False


def cmd_run(args: list[str]) -> int:
    # Explicit handlers: a shell may start us with SIGINT ignored (background jobs), and
    # Ctrl-C or SIGTERM must always end in the orderly shutdown of `finally` below.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    web_port, gateway_port = _ports()
    for name, port in (("MODELYARD_WEB_PORT", web_port), ("MODELYARD_GATEWAY_PORT", gateway_port)):
        if port_open("127.0.0.1", port):
            say(f"port {port} is in use (another `make run`?); choose another with {name}=...")
            return 1
    public = os.environ.get("MODELYARD_PUBLIC_URL", f"http://127.0.0.1:{web_port}")
    gateway = os.environ.get("MODELYARD_GATEWAY_URL", f"http://127.0.0.1:{gateway_port}")
    stack = stack_start(database="modelyard", redis_db=0, prefer_local=False, persist=True)
    group: ProcessGroup | None = None
    env = {
        **_env(stack, "config.settings.local"),
        "MODELYARD_WEB_PORT": str(web_port),
        "MODELYARD_GATEWAY_PORT": str(gateway_port),
        "MODELYARD_PUBLIC_URL": public,
        "MODELYARD_GATEWAY_URL": gateway,
    }
    try:
        for line in stack.started:
            say(f"started {line}")
        manage = [PYTHON, str(ROOT / "manage.py")]
        subprocess.run([*manage, "migrate", "--no-input", "-v", "0"], env=env, check=True)
        subprocess.run([*manage, "collectstatic", "--no-input", "-v", "0"], env=env, check=True)
        subprocess.run([*manage, "seed_demo"], env=env, check=True)
        # What a second terminal needs to reach these servers (config/settings/local.py).
        stack_file_write(DATA, {key: env[key] for key in STACK_VARS})
        # Bound here, not by the gateway: a crashed gateway's clients wait in this socket's
        # backlog for the restarted one (gateway.settings.INHERITED_FD_ENV).
        gateway_socket = socket.create_server(("127.0.0.1", gateway_port), backlog=2048)
        group = ProcessGroup(
            ROOT / "platform" / "Procfile",
            env=env,
            cwd=ROOT,
            sockets={"gateway": (INHERITED_FD_ENV, gateway_socket)},
        )
        group.start()
        if _wait_web(f"{public}/healthz", group):
            say(
                f"ready at {public}/  (gateway {gateway}; Ctrl-C stops everything)\n"
                f"  demo logins: {DATA / 'demo-logins.txt'}\n"
                f"  second terminal: .venv/bin/python manage.py ... finds this stack "
                f"through {stack_file(DATA)}"
            )
        else:
            say(f"{public}/healthz did not answer; see the web lines above")
        # Supervise until Ctrl-C or SIGTERM: nothing else ends the stack.
        while True:
            group.supervise_once()
            stack.supervise_once(say)
            time.sleep(0.2)
    except KeyboardInterrupt:
        return 0
    finally:
        # Ignore a second Ctrl-C: the shutdown below must finish to leave nothing behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _shutdown(stack, group, env)


def _shutdown(stack: Stack, group: ProcessGroup | None, env: dict[str, str]) -> None:
    """Web, gateway, worker and beat first (they need Redis and PostgreSQL until they have
    exited), then the slot servers (recorded as stopped), the embedded servers last."""
    stack_file_remove(DATA)
    if group is not None:
        group.stop()
        say("stopping the slot servers")
        subprocess.run([PYTHON, "-m", "devstack", "slots-stop"], env=env, check=False)
        for line in strays_stop(DATA):
            say(line)
    say("stopping the embedded Redis and PostgreSQL")
    stack.stop()
    say("stopped")


def cmd_slots_stop(args: list[str]) -> int:
    """Stop every local slot server and record it as stopped (run by `make run`'s shutdown)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    import django

    django.setup()
    from deployments.services import runtime_servers_stop

    for line in runtime_servers_stop(reason="make run stopped"):
        say(line)
    return 0


def cmd_env(args: list[str]) -> int:
    """Print the running stack's variables (shell syntax); start nothing."""
    values = stack_file_read(DATA)
    if not values:
        print(
            f"No running stack: {stack_file(DATA)} is missing or names a process that is gone "
            "(start one with `make run`).",
            file=sys.stderr,
        )
        return 1
    for key, value in values.items():
        if key != PID_KEY:
            print(f"export {key}={shlex.quote(value)}")
    return 0


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(prog="python -m devstack")
    parser.add_argument("command", choices=["test", "run", "env", "slots-stop"])
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    ns = parser.parse_args()
    rest = ns.rest[1:] if ns.rest[:1] == ["--"] else ns.rest
    commands = {"test": cmd_test, "run": cmd_run, "env": cmd_env, "slots-stop": cmd_slots_stop}
    return commands[ns.command](rest)


if __name__ == "__main__":
    sys.exit(main())
