"""SSRF: every outbound URL Modelyard calls is a webhook target. Loopback, private ranges,
link-local and cloud metadata addresses, their many spellings, DNS names resolving to them
(also when the answer changes after the check), and redirects are all refused.

DNS answers for ``*.attacker.test`` are patched at the resolver boundary (socket.getaddrinfo),
the only fake here; deliveries go to real HTTP servers on 127.0.0.1.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone

from accounts.choices import Role
from deployments.services import deployment_create
from monitoring.choices import AlertKind
from monitoring.models import Alert, WebhookDelivery, WebhookEndpoint
from monitoring.services.webhooks import webhook_deliver, webhook_endpoint_create

pytestmark = pytest.mark.django_db
HOOKS = "/api/v1/webhooks/"

INTERNAL_URLS = [
    # loopback, in every spelling the resolver accepts
    "http://127.0.0.1/hook",
    "http://127.1/hook",
    "http://2130706433/hook",
    "http://0x7f000001/hook",
    "http://0177.0.0.1/hook",
    "http://127.255.255.254/hook",
    "http://localhost/hook",
    "http://LOCALHOST./hook",
    "http://[::1]/hook",
    "http://[0:0:0:0:0:0:0:1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::ffff:7f00:1]/hook",
    "http://0.0.0.0/hook",
    "http://0/hook",
    "http://[::]/hook",
    # private and shared ranges
    "http://10.0.0.1/hook",
    "http://172.16.0.1/hook",
    "http://172.31.255.254/hook",
    "http://192.168.1.1/hook",
    "http://100.64.0.1/hook",
    "http://[fd00::1]/hook",
    "http://[::ffff:10.1.2.3]/hook",
    # link-local and cloud metadata
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.170.2/v2/credentials",
    "http://[fe80::1]/hook",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://100.100.100.200/latest/meta-data/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://metadata/computeMetadata/v1/",
    # multicast, broadcast, reserved
    "http://224.0.0.1/hook",
    "http://255.255.255.255/hook",
    "http://240.0.0.1/hook",
    # parser confusion
    "http://127.0.0.1:80#@example.com/hook",
    "http://example.com@127.0.0.1/hook",
    "http://user:pass@example.com/hook",
    "http://\u2460\u2461\u2466.0.0.1/hook",  # circled digits: IDNA folds them to 127.0.0.1
    # other schemes
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_FLUSHALL",
    "dict://127.0.0.1:6379/info",
    "ftp://example.com/hook",
    "javascript:alert(1)",
]

FAKE_DNS = {
    "private.attacker.test": ["10.0.0.7"],
    "metadata.attacker.test": ["169.254.169.254"],
    "loopback.attacker.test": ["127.0.0.1"],
    "v6.attacker.test": ["::1"],
    "mapped.attacker.test": ["::ffff:192.168.0.1"],
    "mixed.attacker.test": ["93.184.216.34", "10.0.0.8"],  # one public answer is not enough
}


@pytest.fixture
def fake_dns(monkeypatch):
    """Answers for *.attacker.test; every other name goes to the real resolver."""
    answers = {name: list(addrs) for name, addrs in FAKE_DNS.items()}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name.rstrip(".").lower() in answers:
            result = []
            for address in answers[name.rstrip(".").lower()]:
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                sockaddr = (address, int(port or 0), 0, 0) if ":" in address else (address, port)
                result.append((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
            return result
        if name.endswith(".attacker.test"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


@pytest.fixture
def admin_api(make_user, api_for, settings):
    settings.MODELYARD_WEBHOOK_ALLOWED_HOSTS = []
    return api_for(make_user(Role.ADMIN, "ada"))


@pytest.mark.parametrize("url", INTERNAL_URLS)
def test_webhook_targets_inside_the_network_are_refused_over_the_api(url, admin_api):
    response = admin_api.post(HOOKS, {"name": "hook", "url": url}, format="json")
    assert response.status_code == 400, (url, response.status_code, response.content)
    assert response.json()["error"]["message"]
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize("name", sorted(FAKE_DNS))
def test_dns_names_resolving_to_internal_addresses_are_refused(name, admin_api, fake_dns):
    response = admin_api.post(HOOKS, {"name": "hook", "url": f"https://{name}/hook"}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "forbidden_target"
    assert not WebhookEndpoint.objects.exists()


def test_changing_an_existing_webhook_to_an_internal_target_is_refused(admin_api, fake_dns):
    fake_dns["public.attacker.test"] = ["93.184.216.34"]
    created = admin_api.post(
        HOOKS, {"name": "hook", "url": "https://public.attacker.test/hook"}, format="json"
    )
    assert created.status_code == 201, created.content
    pk = created.json()["id"]
    for url in ("http://169.254.169.254/", "https://private.attacker.test/x"):
        response = admin_api.patch(f"{HOOKS}{pk}/", {"url": url}, format="json")
        assert response.status_code == 400, response.content
    assert WebhookEndpoint.objects.get(pk=pk).url == "https://public.attacker.test/hook"


# --- at delivery time -----------------------------------------------------------------------


class _Server:
    """A real HTTP server on 127.0.0.1 recording what reaches it."""

    def __init__(self, status: int = 200, location: str = "") -> None:
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                owner.requests.append(self.path)
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def servers():
    made: list[_Server] = []

    def make(**kwargs) -> _Server:
        server = _Server(**kwargs)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


@pytest.fixture
def alert_for(make_user, registered_model):
    operator = make_user(Role.OPERATOR, "olive")
    deployment = deployment_create(
        name="churn-prod", model=registered_model, environment="production", actor=operator
    )

    def deliver_to(endpoint: WebhookEndpoint) -> WebhookDelivery:
        alert = Alert.objects.create(
            key=f"test-{endpoint.pk}", kind=AlertKind.ROLLBACK, deployment=deployment, message="m"
        )
        delivery = WebhookDelivery.objects.create(
            alert=alert, endpoint=endpoint, next_attempt_at=timezone.now()
        )
        return webhook_deliver(delivery_id=delivery.pk)

    return deliver_to


def test_a_name_that_resolves_inside_after_the_check_is_refused_at_delivery(
    fake_dns, servers, alert_for, settings
):
    """DNS rebinding: public when the webhook is saved, loopback when it is delivered."""
    settings.MODELYARD_WEBHOOK_ALLOWED_HOSTS = []
    victim = servers()
    fake_dns["rebind.attacker.test"] = ["93.184.216.34"]
    endpoint = webhook_endpoint_create(
        name="rebind", url=f"http://rebind.attacker.test:{victim.port}/hook", actor=None
    )
    fake_dns["rebind.attacker.test"] = ["127.0.0.1"]
    delivery = alert_for(endpoint)
    assert delivery.state != "succeeded"
    assert "target refused" in delivery.last_error
    assert victim.requests == []


@pytest.mark.parametrize(
    "status, target",
    [
        (302, "http://localhost:{port}/internal"),
        (307, "http://127.0.0.2:{port}/internal"),
        (301, "http://169.254.169.254/latest/meta-data/"),
        (308, "http://[::1]:{port}/internal"),
    ],
)
def test_redirects_from_an_allowed_target_are_not_followed(
    status, target, servers, alert_for, settings
):
    """An admin allowed 127.0.0.1 as a receiver; its redirect elsewhere is not followed."""
    settings.MODELYARD_WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    internal = servers()
    bouncer = servers(status=status, location=target.format(port=internal.port))
    endpoint = webhook_endpoint_create(
        name="bounce", url=f"http://127.0.0.1:{bouncer.port}/hook", actor=None
    )
    delivery = alert_for(endpoint)
    assert bouncer.requests == ["/hook"]
    assert internal.requests == []
    assert delivery.state != "succeeded" and "redirects are not followed" in delivery.last_error


def test_an_allowed_target_really_receives_deliveries(servers, alert_for, settings):
    """The control case: the refusals above are about the targets."""
    settings.MODELYARD_WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    receiver = servers()
    endpoint = webhook_endpoint_create(
        name="ok", url=f"http://127.0.0.1:{receiver.port}/hook", actor=None
    )
    assert alert_for(endpoint).state == "succeeded"
    assert receiver.requests == ["/hook"]
