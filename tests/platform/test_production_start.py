"""The README's "Running in production" start, as far as it runs without a container engine.

Every step goes through the image's entrypoint (platform/entrypoint.sh) with
``config.settings.production`` and the environment the README lists, on a database of its
own: the release step (migrations + static files), creating the first admin with
``manage adduser``, starting the web process, and what a proxy and a probe then see (HTTP
redirected to HTTPS, HSTS, static files, /readyz, the API with the admin's token).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from devstack.services import database_url_of

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = str(ROOT / "platform" / "entrypoint.sh")
# One per test worker (make test runs three): each drops and creates its own.
DATABASE = "modelyard_k8s_prodstart" + os.environ.get("PYTEST_XDIST_WORKER", "")
HOST = "modelyard.example.com"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _get(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def production_database() -> str:
    server = settings.DATABASES["default"]
    admin = psycopg.connect(
        host=server["HOST"],
        port=server["PORT"] or 5432,
        user=server["USER"],
        password=server["PASSWORD"] or None,
        dbname="postgres",
        autocommit=True,
    )
    admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    admin.execute(f"CREATE DATABASE {DATABASE}")
    yield database_url_of({**server, "NAME": DATABASE})
    admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    admin.close()


def test_production_start_from_the_readme(production_database, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    secret_file = tmp_path / "django_secret_key"
    secret_file.write_text(secrets.token_urlsafe(50))
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "MODELYARD_", "DATABASE_URL", "REDIS_URL"))
    }
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        PYTHONPATH=str(ROOT),
        DJANGO_SETTINGS_MODULE="config.settings.production",
        DJANGO_SECRET_KEY_FILE=str(secret_file),
        DJANGO_ALLOWED_HOSTS=f"{HOST},localhost",
        DJANGO_CSRF_TRUSTED_ORIGINS=f"https://{HOST}",
        DATABASE_URL=production_database,
        REDIS_URL=settings.REDIS_URL,
        MODELYARD_DATA_DIR=str(tmp_path / "data"),
        MODELYARD_STATIC_ROOT=str(tmp_path / "static"),
        MODELYARD_PUBLIC_URL=f"https://{HOST}",
        BENTOML_DO_NOT_TRACK="True",
        TMPDIR=str(tmp_path),
        PORT=str(port),
        WEB_CONCURRENCY="1",
        WEB_THREADS="2",
    )

    def run(*args: str) -> str:
        result = subprocess.run(
            [ENTRYPOINT, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, f"{args}: {result.stderr[-3000:]}"
        return result.stdout

    # What the image build does (platform/Dockerfile): static files into the image's tree.
    static = tmp_path / "static"
    build_env = {k: v for k, v in env.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    subprocess.run(
        [ENTRYPOINT, "manage", "collectstatic", "--no-input", "--verbosity", "0"],
        env={
            **build_env,
            "DJANGO_SETTINGS_MODULE": "config.settings.base",
            "DJANGO_SECRET_KEY": "collectstatic-only",
            "DATABASE_URL": "postgres://build@localhost/build",
            "REDIS_URL": "redis://localhost:6379/0",
        },
        check=True,
        timeout=300,
    )
    assert list(static.rglob("*.css")), "static files were not collected"

    # Before the release step, the processes' init step keeps waiting ...
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run([ENTRYPOINT, "wait-for-migrations"], env=env, capture_output=True, timeout=8)
    run("migrate")  # the release step
    run("wait-for-migrations")  # ... and lets them start once it is done
    token = run("manage", "adduser", "admin", "--role", "admin", "--password", "pw-1", "--token")
    token = token.strip().splitlines()[-1].strip()

    web = subprocess.Popen(
        [ENTRYPOINT, "web"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    behind_tls = {"Host": HOST, "X-Forwarded-Proto": "https"}
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                status, _, body = _get(f"{base}/readyz", {**behind_tls, "Host": "localhost"})
                if status == 200:
                    break
            except OSError:
                pass
            assert web.poll() is None, web.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "web never became ready"
            time.sleep(0.5)
        assert b'"database": "ok"' in body and b'"redis": "ok"' in body

        # Plain HTTP through the proxy is sent to HTTPS; HTTPS answers carry HSTS.
        status, headers, _ = _get(f"{base}/healthz", {"Host": HOST})
        assert status == 301 and headers["Location"] == f"https://{HOST}/healthz"
        status, headers, _ = _get(f"{base}/healthz", behind_tls)
        assert status == 200
        assert headers["Strict-Transport-Security"] == (
            "max-age=31536000; includeSubDomains; preload"
        )
        # An unknown Host is refused (DJANGO_ALLOWED_HOSTS).
        status, _, _ = _get(f"{base}/healthz", {**behind_tls, "Host": "evil.example.net"})
        assert status == 400
        # Static files are served by the web process itself (whitenoise).
        path = next(static.rglob("*.css")).relative_to(static).as_posix()
        status, _, _ = _get(f"{base}/static/{path}", behind_tls)
        assert status == 200
        # The first admin's token works on the API.
        status, _, body = _get(
            f"{base}/api/v1/tokens/", {**behind_tls, "Authorization": f"Token {token}"}
        )
        assert status == 200, body[:500]
        status, _, _ = _get(f"{base}/api/v1/tokens/", behind_tls)
        assert status in (401, 403)
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        try:
            web.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(web.pid, signal.SIGKILL)
            web.wait()
