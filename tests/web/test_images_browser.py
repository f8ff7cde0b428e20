"""Images in real Chromium: pull with live progress, the image page, tag and remove."""

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.live, pytest.mark.browser]


def test_pull_from_the_images_page_shows_the_job_and_the_image(logged_in_page, multilayer_image, registry):
    page = logged_in_page
    # Its own repository: another test may have pulled the multilayer image already.
    registry.push(multilayer_image, "test/multilayer-browser", "latest")
    ref = f"{registry.host}/test/multilayer-browser:latest"
    page.goto("/images/")
    page.fill("#pull-form input[name=reference]", ref)
    page.click("#pull-form button")
    expect(page.locator("h1")).to_contain_text("Pull")
    expect(page.locator("#job-status")).to_have_text("Succeeded", timeout=60000)
    expect(page.locator("#job-log")).to_contain_text("Downloaded newer image")
    page.click("#job-result")
    expect(page.locator("#tags")).to_contain_text(ref)
    expect(page.locator("#layers tbody tr")).to_have_count(3)
    expect(page.locator("#history")).to_contain_text("rm /data/a.txt, replace /opq")
    expect(page.locator("#layers tbody tr").first).to_contain_text("rm /data/a.txt, replace /opq")
    expect(page.locator("#inspect")).to_contain_text('"RootFS"')
    # Tag it, see the tag, then remove the image.
    page.fill("input[name=target]", "browser/tagged:v1")
    page.get_by_role("button", name="Tag", exact=True).click()
    expect(page.locator("#tags")).to_contain_text("browser/tagged:v1")
    page.check("input[name=force]")
    page.once("dialog", lambda dialog: dialog.accept())  # "Remove image ...?"
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


def test_import_from_the_page_then_save_and_load_the_archive(logged_in_page, tmp_path):
    import io
    import tarfile

    page = logged_in_page
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        data = b"from the browser\n"
        info = tarfile.TarInfo("etc/browser.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    page.goto("/images/")
    page.click("#import-load summary")
    page.set_input_files("#import-form input[name=archive]", str(rootfs))
    page.fill("#import-form input[name=reference]", "browser/imported:v1")
    page.fill("#import-form textarea[name=changes]", 'CMD ["cat", "/etc/browser.txt"]')
    page.click("#import-form button")
    expect(page.locator("#job-status")).to_have_text("Succeeded", timeout=30000)
    page.click("#job-result")
    expect(page.locator("#tags")).to_contain_text("browser/imported:v1")
    expect(page.locator("#inspect")).to_contain_text('"/etc/browser.txt"')
    # Save it as an archive and download it.
    page.click("#save-form button")
    expect(page.locator("#job-status")).to_have_text("Succeeded", timeout=30000)
    with page.expect_download() as download:
        page.click("#job-result")
    archive = tmp_path / "saved.tar"
    download.value.save_as(archive)
    with tarfile.open(archive) as tar:
        manifest = tar.extractfile("manifest.json").read().decode()
    assert "browser/imported:v1" in manifest
    # Remove the image, then load the archive back from the page.
    page.goto("/images/")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#images tr", has_text="browser/imported").get_by_role("button", name="Remove").click()
    expect(page.locator("#images")).not_to_contain_text("browser/imported")
    page.click("#import-load summary")
    page.set_input_files("#load-form input[name=archive]", str(archive))
    page.click("#load-form button")
    expect(page.locator("#job-status")).to_have_text("Succeeded", timeout=30000)
    expect(page.locator("#job-log")).to_contain_text("Loaded image: browser/imported:v1")
    page.goto("/images/")
    expect(page.locator("#images")).to_contain_text("browser/imported")


def test_search_a_registry_and_pull_a_result_with_one_click(logged_in_page, registry, busybox_image):
    page = logged_in_page
    page.goto("/images/search/")
    page.fill("input[name=term]", f"{registry.host}/busy")
    page.get_by_role("button", name="Search").click()
    row = page.locator("#results tr", has_text="library/busybox")
    expect(row).to_be_visible()
    row.get_by_role("button", name="Pull").click()
    expect(page.locator("#job-status")).to_have_text("Succeeded", timeout=30000)


def test_a_running_pull_is_cancelled_from_its_job_page(logged_in_page, big_image, slow_registry):
    page = logged_in_page
    ref = f"{slow_registry.host}/test/big:latest"
    page.goto("/images/")
    page.fill("#pull-form input[name=reference]", ref)
    page.click("#pull-form button")
    # One progress bar per layer, moving live.
    expect(page.locator("#job-progress .row progress").first).to_be_visible(timeout=20000)
    expect(page.locator("#job-progress .row").last).to_contain_text("MB/s", timeout=20000)
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#job-status")).to_have_text("Cancelled", timeout=20000)
    page.goto("/images/")
    expect(page.locator("#images")).not_to_contain_text("test/big")


def test_saved_registry_credentials_let_berth_push_and_pull(logged_in_page, auth_registry, busybox_image):
    page = logged_in_page
    host = auth_registry.host
    page.goto("/images/registries/")
    page.fill("#registry-form input[name=host]", host)
    page.fill("#registry-form input[name=username]", "berth")
    page.fill("#registry-form input[name=password]", "wrong-password")
    page.click("#registry-form button")
    expect(page.locator(".messages")).to_contain_text(f"Cannot log in to {host}")
    expect(page.locator("#registries")).not_to_contain_text(host)
    page.fill("#registry-form input[name=host]", host)
    page.fill("#registry-form input[name=username]", "berth")
    page.fill("#registry-form input[name=password]", "s3cret-test")
    page.click("#registry-form button")
    expect(page.locator(".messages")).to_contain_text("Login Succeeded")
    try:
        expect(page.locator("#registries")).to_contain_text(host)
        # Pull busybox, tag it into the private registry, push it from the image page.
        page.goto("/images/")
        page.fill("#pull-form input[name=reference]", busybox_image.references[0])
        page.click("#pull-form button")
        expect(page.locator("#job-status")).to_have_text("Succeeded", timeout=30000)
        page.click("#job-result")
        target = f"{host}/browser/busybox:pushed"
        page.fill("input[name=target]", target)
        page.get_by_role("button", name="Tag", exact=True).click()
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name=f"Push {target}").click()
        expect(page.locator("#job-status")).to_have_text("Succeeded", timeout=30000)
        expect(page.locator("#job-log")).to_contain_text("pushed: digest: sha256:")
        # And pull it back through Berth with the saved credentials.
        page.goto("/images/")
        page.fill("#pull-form input[name=reference]", target)
        page.click("#pull-form button")
        expect(page.locator("#job-status")).to_have_text("Succeeded", timeout=30000)
    finally:
        # Forget the credentials again, whatever happened: other tests expect Berth to hold none.
        page.goto("/images/registries/")
        row = page.locator("#registries tr", has_text=host)
        if row.count():
            row.get_by_role("button", name="Remove").click()
        expect(page.locator("#registries")).not_to_contain_text(host)
