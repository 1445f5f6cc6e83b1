"""The demo's gateway key survives a restart of `make run` (seed_demo runs on every start)."""

from __future__ import annotations

import pytest

from deployments import services as deployment_services
from deployments.models import Deployment, DeploymentKey
from frontend.demo import demo_key_ensure, demo_users_ensure
from gateway.routes import deployment_key_hash
from tests.factories import RegisteredModelFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo_deployment(tmp_path):
    logins = tmp_path / "demo-logins.txt"
    demo_users_ensure(logins)
    from accounts.models import User

    model = RegisteredModelFactory(name="demo-key-model", owner=User.objects.get(username="dana"))
    deployment_services.deployment_create(
        name="demo-key-test",
        model=model,
        environment="staging",
        actor=User.objects.get(username="olive"),
    )
    return logins


def test_a_restart_keeps_the_key_and_passwords_change(demo_deployment):
    logins = demo_deployment
    key, issued = demo_key_ensure(deployment_name="demo-key-test", logins_path=logins)
    assert issued and f"gateway key for demo-key-test: {key}" in logins.read_text()
    before = logins.read_text()

    # The next `make run`: new passwords, the same key, no second key issued.
    demo_users_ensure(logins)
    again, issued = demo_key_ensure(deployment_name="demo-key-test", logins_path=logins)
    after = logins.read_text()
    assert (again, issued) == (key, False)
    assert after.count("gateway key for demo-key-test: ") == 1 and key in after
    assert after != before  # the passwords did change
    assert DeploymentKey.objects.filter(deployment__name="demo-key-test").count() == 1
    assert logins.stat().st_mode & 0o077 == 0


def test_a_revoked_key_is_replaced_by_a_new_one_written_down(demo_deployment):
    logins = demo_deployment
    key, _ = demo_key_ensure(deployment_name="demo-key-test", logins_path=logins)
    deployment = Deployment.objects.get(name="demo-key-test")
    record = DeploymentKey.objects.get(digest=deployment_key_hash(key))
    deployment_services.deployment_key_revoke(
        deployment=deployment, key_id=record.pk, actor=None, reason="test"
    )

    fresh, issued = demo_key_ensure(deployment_name="demo-key-test", logins_path=logins)
    assert issued and fresh != key
    text = logins.read_text()
    assert key not in text and f"gateway key for demo-key-test: {fresh}" in text
    assert DeploymentKey.objects.get(digest=deployment_key_hash(fresh)).revoked_at is None


def test_a_lost_file_gets_a_new_key(demo_deployment):
    logins = demo_deployment
    demo_key_ensure(deployment_name="demo-key-test", logins_path=logins)
    logins.unlink()
    demo_users_ensure(logins)
    key, issued = demo_key_ensure(deployment_name="demo-key-test", logins_path=logins)
    assert issued and key in logins.read_text()
