"""In real Chromium: log in, see the dashboard with live health, manage tokens."""

import re

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.live, pytest.mark.browser]


def test_a_wrong_password_keeps_the_user_out(page, berth):
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/$"))
    page.fill("input[name=username]", berth.username)
    page.fill("input[name=password]", "not-the-password")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_contain_text("didn't match")
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))


def test_login_shows_the_dashboard_with_live_health(logged_in_page):
    page = logged_in_page
    expect(page.locator("h1")).to_have_text("Dashboard")
    expect(page.locator('[data-health="websocket"] .badge')).to_have_text("ok")
    expect(page.locator('[data-health="redis"] .badge')).to_have_text("ok", timeout=20000)
    expect(page.locator('[data-health="worker"] .badge')).to_have_text("ok", timeout=20000)
    expect(page.locator('[data-health="worker"]')).to_contain_text("berth@testnode")
    expect(page.locator("text=overlay2")).to_be_visible()
    for link in ("Images", "Containers", "Jobs"):
        expect(page.locator("nav").get_by_role("link", name=link)).to_be_visible()


def test_a_token_made_on_the_tokens_page_works_until_revoked(logged_in_page, berth):
    page = logged_in_page
    page.goto("/accounts/tokens/")
    page.fill("input[name=description]", "browser-made")
    page.click("text=Create token")
    token = page.locator("#new-token").inner_text().strip()
    assert token.startswith("berth_")
    assert berth.request("GET", "/_ping", headers={"Authorization": f"Bearer {token}"})[0] == 200
    row = page.locator("#tokens tr", has_text="browser-made")
    row.get_by_role("button", name="Revoke").click()
    expect(page.locator("#tokens tr", has_text="browser-made")).to_contain_text("revoked")
    assert berth.request("GET", "/_ping", headers={"Authorization": f"Bearer {token}"})[0] == 401


def test_logout(logged_in_page, berth):
    page = logged_in_page
    page.get_by_role("button", name="Log out").click()
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
