"""Browser tests: Playwright (sync API) driving the system Chromium against the live stack.

Fixtures:
- ``browser`` (session): headless Chromium (MODELYARD_CHROMIUM, else /usr/bin/chromium or
  /usr/bin/chromium-browser). Missing: skipped locally, a failure when CI is set.
- ``ui``: the live stack (real gunicorn, Celery worker, gateway) plus helpers:
  ``ui.url``, ``ui.login(page, user, password)``, ``ui.new_page(user)``,
  ``ui.shot(page, name)``, ``ui.axe(page)``.
Users made with the ``make_user`` style fixtures have the password ``ui.password``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT

VENDOR = Path(__file__).resolve().parent / "vendor"
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# tests.factories.UserFactory's password: every user a test makes can log in with it.
PASSWORD = "pw-for-tests-only"
SERIOUS = ("serious", "critical")


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.stack)


def _chromium_path() -> str | None:
    configured = os.environ.get("MODELYARD_CHROMIUM")
    if configured:
        return configured
    return next((path for path in CHROMIUM_CANDIDATES if Path(path).exists()), None)


# Module scope, not session: while Playwright's sync API runs, its asyncio loop counts as
# running in this thread, so asyncio.run() in any later (non-browser) test would fail.
@pytest.fixture(scope="module")
def browser():
    executable = _chromium_path()
    if executable is None:
        message = (
            "No Chromium found (set MODELYARD_CHROMIUM or install it: `apt-get install chromium`)."
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    # That same loop makes Django's ORM take the test thread for async code; the tests only
    # touch the ORM between browser steps, never inside one. Only for as long as the browser runs.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            instance = playwright.chromium.launch(
                executable_path=executable, headless=True, args=CHROMIUM_ARGS
            )
            try:
                yield instance
            finally:
                instance.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture(scope="session")
def _collected_static(tmp_path_factory):
    """Static files collected once per session into a data dir of the stack's own: gunicorn
    runs with DEBUG off, so WhiteNoise serves only collected files (htmx, plotly.js, css)."""
    from django.core.management import call_command
    from django.test import override_settings

    data_dir = tmp_path_factory.mktemp("stack-data")
    with override_settings(STATIC_ROOT=data_dir / "static"):
        call_command("collectstatic", interactive=False, verbosity=0)
    return data_dir


@pytest.fixture(autouse=True)
def _stack_serves_static(_collected_static, settings, monkeypatch):
    # Autouse, so it runs before live_stack builds the stack's environment from
    # settings.DATA_DIR and os.environ.
    settings.DATA_DIR = _collected_static
    settings.STATIC_ROOT = _collected_static / "static"
    monkeypatch.setenv("MODELYARD_STATIC_ROOT", str(settings.STATIC_ROOT))


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "test"


class UI:
    password = PASSWORD

    def __init__(self, *, browser, stack, test_name: str) -> None:
        self.browser = browser
        self.stack = stack
        self.url = stack.url
        self.test_name = _safe_name(test_name)
        self.contexts: list = []
        self.console_errors: list[str] = []
        # This test's pictures only: a stale one must not pass for a new one.
        shutil.rmtree(SCREENSHOTS / self.test_name, ignore_errors=True)

    def new_context(self):
        context = self.browser.new_context(
            base_url=self.url, viewport={"width": 1280, "height": 900}
        )
        context.set_default_timeout(15_000)
        self.contexts.append(context)
        return context

    def login(self, page, user, password: str = PASSWORD) -> None:
        username = user if isinstance(user, str) else user.get_username()
        page.goto(f"{self.url}/login/")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(lambda url: "/login/" not in url)

    def new_page(self, user, password: str = PASSWORD):
        page = self.new_context().new_page()
        self.watch(page)
        self.login(page, user, password)
        return page

    def watch(self, page) -> None:
        """Collect the page's console errors and failed requests (in ``console_errors``)."""
        page.on(
            "console",
            lambda message: (
                self.console_errors.append(f"{page.url}: {message.text}")
                if message.type == "error" and "Failed to load resource" not in message.text
                else None
            ),
        )
        page.on(
            "response",
            lambda response: (
                self.console_errors.append(f"HTTP {response.status} {response.url}")
                if response.status >= 400
                else None
            ),
        )

    def shot(self, page, name: str) -> Path:
        folder = SCREENSHOTS / self.test_name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{_safe_name(name)}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    def axe(self, page) -> list[dict]:
        """axe-core's violations of impact serious or critical on the current page.

        Injected with evaluate (DevTools protocol), not a <script> tag, so the page's CSP
        (script-src 'self') needs no exception for the test.
        """
        if not page.evaluate("() => typeof window.axe !== 'undefined'"):
            page.evaluate(_axe_source() + "\n;true")
        result = page.evaluate(
            "async () => JSON.stringify(await axe.run(document, {resultTypes: ['violations']}))"
        )
        violations = json.loads(result)["violations"]
        return [v for v in violations if v.get("impact") in SERIOUS]

    def close(self) -> None:
        for context in self.contexts:
            context.close()


_AXE_SOURCE: str | None = None


def _axe_source() -> str:
    global _AXE_SOURCE
    if _AXE_SOURCE is None:
        _AXE_SOURCE = (VENDOR / "axe.min.js").read_text(encoding="utf-8")
    return _AXE_SOURCE


def axe_summary(violations: list[dict]) -> str:
    """Readable assertion message: rule, impact, and the first offending elements."""
    lines = []
    for v in violations:
        targets = [", ".join(node.get("target", [])) for node in v.get("nodes", [])[:3]]
        lines.append(f"{v['id']} ({v['impact']}): {v['help']} → {targets}")
    return "\n".join(lines)


@pytest.fixture
def ui(request, browser, live_stack):
    session = UI(browser=browser, stack=live_stack, test_name=request.node.name)
    try:
        yield session
    finally:
        session.close()
