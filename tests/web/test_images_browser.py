"""Images in real Chromium: pull with live progress, the image page, tag and remove."""

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.live, pytest.mark.browser]


def test_pull_from_the_images_page_shows_the_job_and_the_image(logged_in_page, multilayer_image):
    page = logged_in_page
    ref = multilayer_image.references[0]
    page.goto("/images/")
    page.fill("#pull-form input[name=reference]", ref)
    page.click("#pull-form button")
    expect(page.locator("h1")).to_contain_text("Pull")
    expect(page.locator("#job-status")).to_have_text("Succeeded", timeout=60000)
    expect(page.locator("#job-log")).to_contain_text("Pull complete")
    expect(page.locator("#job-log")).to_contain_text("Downloaded newer image")
    page.click("#job-result")
    expect(page.locator("#tags")).to_contain_text(ref)
    expect(page.locator("#layers tbody tr")).to_have_count(3)
    expect(page.locator("#history")).to_contain_text("rm /data/a.txt, replace /opq")
    expect(page.locator("#inspect")).to_contain_text('"RootFS"')
    # Tag it, see the tag, then remove the image.
    page.fill("input[name=target]", "browser/tagged:v1")
    page.get_by_role("button", name="Tag", exact=True).click()
    expect(page.locator("#tags")).to_contain_text("browser/tagged:v1")
    page.check("input[name=force]")
    page.get_by_role("button", name="Remove image").click()
    expect(page.locator(".messages")).to_contain_text("Deleted")
    expect(page.locator("#images")).not_to_contain_text(ref)


def test_an_invalid_reference_is_refused_with_a_reason(logged_in_page):
    page = logged_in_page
    page.goto("/images/")
    page.fill("#pull-form input[name=reference]", "busybox/UPPER")
    page.click("#pull-form button")
    expect(page.locator(".messages")).to_contain_text("Cannot pull")
    expect(page.locator(".messages")).to_contain_text("lowercase")
