"""Networks in Chromium: create one, run a published web server on it, open its port from the page."""

import ipaddress
import re
import uuid

import pytest
from playwright.sync_api import expect

from tests.support.net import free_port

pytestmark = [pytest.mark.live, pytest.mark.browser]


def test_create_a_network_run_on_it_and_see_addresses_and_ports(logged_in_page):
    page = logged_in_page
    net = "pnet-" + uuid.uuid4().hex[:6]
    create_network(page, net)
    port = free_port()
    name = "pweb-" + uuid.uuid4().hex[:6]
    page.goto("/containers/run/")
    page.fill("#run-form input[name=image]", "busybox")
    page.fill("#run-form input[name=name]", name)
    page.fill("#run-form input[name=command]",
              "sh -c 'mkdir -p /www; echo served-by-berth > /www/index.html; exec httpd -f -p 80 -h /www'")
    page.fill("#run-form input[name=network]", net)
    page.fill("#run-form textarea[name=ports]", f"127.0.0.1:{port}:80")
    page.click("#run-form button[type=submit]")
    expect(page.locator("#state")).to_contain_text("Running")
    expect(page.locator("#addresses")).to_contain_text(net)
    link = page.locator("#ports a")
    expect(link).to_have_attribute("href", f"http://127.0.0.1:{port}/")
    body = page.request.get(f"http://127.0.0.1:{port}/").text()
    assert "served-by-berth" in body
    page.goto(f"/networks/{net}/")
    expect(page.locator("#members")).to_contain_text(name)
    # A network in use cannot go; after the container goes, it can.
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Remove").click()
    expect(page.locator(".messages")).to_contain_text("Cannot remove")
    page.goto(f"/containers/{name}/")
    remove_container_then_network(page, net)


def create_network(page, net: str) -> None:
    page.goto("/networks/")
    page.fill("#network-form input[name=name]", net)
    page.click("#network-form button")
    expect(page.locator("h1")).to_have_text(f"Network {net}")


def remove_container_then_network(page, net: str) -> None:
    """From the container's page: force-remove it, then remove the network from its page."""
    page.check("#actions input[name=force]")
    page.once("dialog", lambda d: d.accept())
    page.locator("#actions").get_by_role("button", name="Remove").click()
    page.goto(f"/networks/{net}/")
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Remove").click()
    expect(page.locator("#networks")).not_to_contain_text(net)


def test_the_run_form_sets_a_fixed_address_and_refuses_it_off_user_networks(logged_in_page):
    page = logged_in_page
    tag = uuid.uuid4().hex[:6]
    net, name = f"ipnet-{tag}", f"ipweb-{tag}"
    create_network(page, net)
    subnet = re.search(r"(\d+\.\d+\.\d+\.\d+/\d+) \(gateway", page.content())[1]
    address = str(ipaddress.IPv4Network(subnet).network_address + 77)
    page.goto("/containers/run/")
    page.fill("#run-form input[name=image]", "busybox")
    page.fill("#run-form input[name=command]", "sleep 300")
    page.fill("#run-form input[name=ip]", address)
    page.click("#run-form button[type=submit]")
    expect(page.locator("#run-errors")).to_contain_text("supported on user defined networks only")
    page.fill("#run-form input[name=name]", name)
    page.fill("#run-form input[name=network]", net)
    page.fill("#run-form input[name=network_aliases]", "primary")
    page.click("#run-form button[type=submit]")
    expect(page.locator("#state")).to_contain_text("Running")
    expect(page.locator("#addresses")).to_contain_text(f"{net}: {address}")
    remove_container_then_network(page, net)
