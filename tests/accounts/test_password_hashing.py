"""The production password hasher: scrypt at OWASP's minimum, PBKDF2 hashes still accepted."""

from __future__ import annotations

import pytest
from django.contrib.auth.hashers import check_password, get_hasher, make_password
from django.test import override_settings

from accounts.hashers import OwaspScryptPasswordHasher
from config.settings import base

pytestmark = pytest.mark.django_db

# The test settings hash with MD5 for speed; these tests use the production list.
production_hashers = override_settings(PASSWORD_HASHERS=base.PASSWORD_HASHERS)


@production_hashers
def test_passwords_are_hashed_with_scrypt_at_owasp_strength():
    hasher = get_hasher()
    assert isinstance(hasher, OwaspScryptPasswordHasher)
    encoded = make_password("correct horse battery staple")
    algorithm, _salt, n, r, p = _scrypt_parts(encoded)
    assert algorithm == "scrypt"
    # OWASP's equal-strength minimums: N * p >= 2**17 at r=8.
    assert (int(n), int(r), int(p)) == (2**14, 8, 5)
    assert check_password("correct horse battery staple", encoded)
    assert not check_password("wrong", encoded)


def _scrypt_parts(encoded: str) -> tuple[str, str, str, str, str]:
    # scrypt$<n>$<salt>$<r>$<p>$<hash>
    algorithm, n, salt, r, p, _hash = encoded.split("$")
    return algorithm, salt, n, r, p


@production_hashers
def test_a_pbkdf2_password_still_logs_in_and_is_rehashed_with_scrypt(client, scientist):
    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.PBKDF2PasswordHasher"]):
        scientist.set_password("older-Pw-123")
        scientist.save()
    assert scientist.password.startswith("pbkdf2_sha256$")
    response = client.post("/login/", {"username": scientist.username, "password": "older-Pw-123"})
    assert response.status_code == 302
    scientist.refresh_from_db()
    assert scientist.password.startswith("scrypt$")
