"""What one sign-in costs with the production hasher against Django's PBKDF2 default.

Run: python -m devstack test -- -m benchmark -s tests/benchmarks/test_login_bench.py
"""

from __future__ import annotations

import statistics
import time

import pytest
from django.test import Client, override_settings

from config.settings import base

pytestmark = [pytest.mark.benchmark, pytest.mark.django_db]

HASHERS = {
    "pbkdf2 (Django default, 1,000,000 iterations)": [
        "django.contrib.auth.hashers.PBKDF2PasswordHasher"
    ],
    "production (accounts/hashers.py)": base.PASSWORD_HASHERS,
}


def test_login_time_by_password_hasher(scientist):
    print()
    medians = {}
    for label, hashers in HASHERS.items():
        with override_settings(PASSWORD_HASHERS=hashers, AXES_ENABLED=True):
            scientist.set_password("bench-Pw-123")
            scientist.save()
            timings = []
            for _ in range(5):
                client = Client()
                started = time.perf_counter()
                response = client.post(
                    "/login/", {"username": scientist.username, "password": "bench-Pw-123"}
                )
                timings.append(time.perf_counter() - started)
                assert response.status_code == 302
        medians[label] = statistics.median(timings)
        print(f"login POST, {label:48}: median {medians[label] * 1000:6.0f} ms")
    before, after = medians.values()
    print(f"login with the production hasher takes {after / before:.2f}x the PBKDF2 time")
