"""Fixtures for the dashboard: a real daphne web process and a real Chromium.

Daphne serves the ASGI app on the test database (``subprocess_env``) while the
``hub`` fixture's django-q2 cluster runs the agents, so everything the
browser sees crossed process boundaries exactly as in production.
"""

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from tests.conftest import ROOT, subprocess_env
from tests.launcher import Processes, free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = ROOT / "build" / "screenshots"
PASSWORDS = {"operator": "operator-password", "admin": "admin-password"}


class WebProcess:
    """``daphne`` on 127.0.0.1:<port>, restartable on the same port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        # The test settings, so passwords hashed by the tests (MD5) verify here too.
        env = {**subprocess_env(), "DJANGO_SETTINGS_MODULE": "orchestrator_site.settings_test"}
        # The browser tests allow async-unsafe calls in *this* process only.
        env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        self.group = Processes(env=env, log_dir=Path(settings.DATA_DIR), prefix=f"{port}-")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = self.group.start_web(self.port)

    def stop(self) -> None:
        self.group.kill()

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def web(django_db_setup, django_db_blocker) -> Iterator[WebProcess]:
    server = WebProcess(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_web(django_db_setup) -> Iterator[WebProcess]:
    """A web process of the test's own, for tests that kill and restart it."""
    server = WebProcess(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chromium(worker_cluster):
    """One headless Chromium per browser test module; skipped loudly where it is not installed.

    It depends on the worker cluster so that the cluster starts (and inherits
    its environment) before this fixture relaxes Django's async-safety check.
    Playwright's sync API keeps an event loop running in the main thread while
    it lives, so it must not outlive the module: a later test that drives an
    ASGI app with ``async_to_sync`` would find that loop and fail.
    """
    if not CHROMIUM.exists():
        print(f"\n!!! BROWSER TESTS SKIPPED: {CHROMIUM} is missing (apt-get install chromium) !!!")
        pytest.skip(f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop running in this thread, which
    # makes Django refuse ORM calls from the test body; the test body is not
    # the code under test, the daphne and worker processes are.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


def login(browser, web: WebProcess, username: str, path: str = "/dashboard/"):
    """A new browser page, logged in through the login form, showing ``path``."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.goto(f"{web.url}{path}")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORDS[username])
    page.click("button[type=submit]")
    page.wait_for_url(f"{web.url}{path}")
    page.wait_for_selector("#connection[data-status=live]")
    return page


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
