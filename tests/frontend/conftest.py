from __future__ import annotations

import re

import pytest

from accounts.choices import Role
from tests.registry.helpers import upload_version

# Inline <script> code or on* handler attributes would break under the CSP (script-src
# 'self'): every page test checks its HTML for them.
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", re.I)
HANDLER_ATTRIBUTE = re.compile(r"<[^>]+\son[a-z]+\s*=", re.I)


def assert_csp_clean(html: str) -> None:
    assert not INLINE_SCRIPT.search(html), INLINE_SCRIPT.search(html).group(0)
    assert not HANDLER_ATTRIBUTE.search(html), HANDLER_ATTRIBUTE.search(html).group(0)


@pytest.fixture
def login(client):
    """Log the test client in as ``user``; returns the client."""

    def as_user(user):
        client.force_login(user)
        return client

    return as_user


@pytest.fixture
def viewer(make_user):
    return make_user(Role.VIEWER, "vic")


@pytest.fixture
def admin_user(make_user):
    user = make_user(Role.ADMIN, "ada")
    user.is_superuser = user.is_staff = True
    user.save()
    return user


@pytest.fixture
def validated_version(registered_model, scientist, sklearn_model):
    return upload_version(registered_model, scientist, sklearn_model)


@pytest.fixture
def in_review(registered_model, scientist, sklearn_model):
    return upload_version(registered_model, scientist, sklearn_model, submit=True)
