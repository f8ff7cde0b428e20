"""Fixtures shared by the whole suite: the live stack and a real browser."""

import os
from pathlib import Path

import pytest

from tests import live


@pytest.fixture(scope="session")
def test_dir() -> Path:
    return Path(os.environ["BERTH_TEST_DIR"])


@pytest.fixture(scope="session")
def redis_server(test_dir):
    """A private redis-server at REDIS_URL for the whole session."""
    logdir = test_dir / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    proc = live.start_redis(logdir)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def berth(redis_server, test_dir):
    """Berth running for real: Daphne and a Celery worker on the private Redis, data under test_dir."""
    server = live.start_live_server(test_dir / "logs")
    yield server
    for proc in reversed(server.processes):
        proc.stop()


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, berth):
    """A fresh browser page (own cookies) on the live server."""
    context = browser.new_context(base_url=berth.url)
    page = context.new_page()
    page.set_default_timeout(15000)
    yield page
    context.close()


@pytest.fixture
def logged_in_page(page, berth):
    """A page logged in as the admin, on the dashboard."""
    page.goto("/accounts/login/")
    page.fill("input[name=username]", berth.username)
    page.fill("input[name=password]", berth.password)
    page.click("button[type=submit]")
    page.wait_for_url(berth.url + "/")
    return page
