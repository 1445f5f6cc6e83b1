"""No default credentials: a fresh install has no account, common default pairs do not
sign in anywhere (also after the demo is seeded: its passwords are generated and printed),
and no deployment file ships a password or secret default."""

from __future__ import annotations

import re
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.test import Client

from accounts.models import ApiToken, User

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]

DEFAULT_PAIRS = [
    ("admin", "admin"),
    ("admin", "password"),
    ("admin", "changeme"),
    ("admin", "modelyard"),
    ("admin", ""),
    ("root", "root"),
    ("modelyard", "modelyard"),
    ("demo", "demo"),
    ("dana", "dana"),
    ("victor", "victor"),
]


def test_a_fresh_install_has_no_accounts_or_tokens():
    assert not User.objects.exists()
    assert not ApiToken.objects.exists()


def _try_defaults() -> list[str]:
    signed_in = []
    for path in ("/login/", "/admin/login/"):
        for username, password in DEFAULT_PAIRS:
            client = Client()
            client.post(path, {"username": username, "password": password})
            if "_auth_user_id" in client.session:
                signed_in.append(f"{path} {username}/{password}")
    return signed_in


def test_default_pairs_do_not_sign_in_on_a_fresh_install():
    assert _try_defaults() == []


def test_the_demo_generates_and_prints_its_passwords(tmp_path, settings):
    settings.DATA_DIR = tmp_path
    from frontend.demo import DEMO_USERS, demo_users_ensure

    first = demo_users_ensure(tmp_path / "logins.txt")
    assert _try_defaults() == []
    second = demo_users_ensure(tmp_path / "logins.txt")
    for (user, _, one), (_, _, two) in zip(first, second, strict=True):
        assert one != two and len(one) >= 16, user  # new, random, long
    assert {user for user, _ in DEMO_USERS} == {user for user, _, _ in second}
    written = (tmp_path / "logins.txt").read_text()
    assert all(password in written for _, _, password in second)
    assert (tmp_path / "logins.txt").stat().st_mode & 0o077 == 0  # owner-only
    # The printed password really signs in (it is the one the user got).
    user, _, password = second[0]
    client = Client()
    client.post("/login/", {"username": user, "password": password})
    assert "_auth_user_id" in client.session


def test_adduser_without_password_creates_a_token_only_account():
    out = StringIO()
    call_command("adduser", "ci-bot", "--role", "viewer", stdout=out)
    assert not User.objects.get(username="ci-bot").has_usable_password()


_DEFAULTED_SECRET = re.compile(
    r"\$\{(?P<name>[A-Z_]*(PASSWORD|SECRET|TOKEN|KEY)[A-Z_]*):-(?P<default>[^}]+)\}"
)
_INLINE_SECRET = re.compile(
    r"(?i)\b(password|passwd|secret_key|api_key)\s*[:=]\s*['\"]?(?!\$|<|\{|\*|…|choose|change)[\w-]{4,}"
)
DEPLOYMENT_FILES = ["Makefile", "platform", "README.md"]


def _files() -> list[Path]:
    found = []
    for entry in DEPLOYMENT_FILES:
        path = ROOT / entry
        found += [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return [p for p in found if p.suffix not in {".png", ".example"}]


def test_no_deployment_file_defaults_a_password_or_secret():
    offenders = []
    for path in _files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if _DEFAULTED_SECRET.search(line) or _INLINE_SECRET.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_docker_compose_has_no_default_database_password():
    text = (ROOT / "docker-compose.yaml").read_text()
    assert not _DEFAULTED_SECRET.search(text), _DEFAULTED_SECRET.search(text)
