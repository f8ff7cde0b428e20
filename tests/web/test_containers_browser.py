"""Containers in real Chromium: the run form, the container page's tabs, live logs and state."""

import uuid

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.live, pytest.mark.browser]


def test_run_a_container_from_the_form_and_follow_it(logged_in_page, tmp_path):
    page = logged_in_page
    name = "web-" + uuid.uuid4().hex[:6]
    page.goto("/containers/run/")
    page.fill("#run-form input[name=image]", "busybox")
    page.fill("#run-form input[name=name]", name)
    page.fill("#run-form input[name=command]",
              "sh -c 'trap \"exit 0\" TERM; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.3; done'")
    page.fill("#run-form textarea[name=env]", "COLOR=blue")
    page.fill("#run-form input[name=memory]", "32m")
    page.click("#run-form button[type=submit]")
    expect(page.locator("#container-header")).to_contain_text(name)
    expect(page.locator("#state")).to_contain_text("Running")
    expect(page.locator("#overview")).to_contain_text("COLOR=blue")
    # Live logs: new ticks keep arriving.
    page.click(".tabs >> text=Logs")
    expect(page.locator("#logs")).to_contain_text("tick 3", timeout=15000)
    expect(page.locator("#logs")).to_contain_text("tick 8", timeout=15000)
    # Processes and stats.
    page.click(".tabs >> text=Processes")
    expect(page.locator("#processes")).to_contain_text("sleep")
    page.click(".tabs >> text=Stats")
    expect(page.locator("#mem-value")).to_contain_text("MiB", timeout=15000)
    # Exec a command: its output and exit code.
    page.click(".tabs >> text=Exec")
    page.fill("#exec-form input[name=command]", "sh -c 'echo $COLOR; ls /nonexistent; exit 4'")
    page.click("#exec-form button")
    expect(page.locator("#exec-output")).to_contain_text("blue")
    expect(page.locator("#exec-output")).to_contain_text("No such file or directory")
    expect(page.locator("#exec-exit")).to_have_text("4")
    # The image page lists the containers that use it.
    page.goto("/images/busybox/")
    expect(page.locator("#image-containers")).to_contain_text(name)
    page.goto(f"/containers/{name}/")
    # Stop it from the page: the state changes to Exited (0).
    page.click(".tabs >> text=Overview")
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#state")).to_contain_text("Exited (0)", timeout=20000)
    page.goto("/containers/")
    expect(page.locator("#containers tr", has_text=name)).to_contain_text("Exited (0)")


def test_files_diff_and_commit_from_the_page(logged_in_page, tmp_path):
    page = logged_in_page
    name = "files-" + uuid.uuid4().hex[:6]
    page.goto("/containers/run/")
    page.fill("#run-form input[name=image]", "busybox")
    page.fill("#run-form input[name=name]", name)
    page.fill("#run-form input[name=command]", "sh -c 'echo secret > /root/notes.txt; sleep 300'")
    page.click("#run-form button[type=submit]")
    expect(page.locator("#state")).to_contain_text("Running")
    page.click(".tabs >> text=Diff")
    expect(page.locator("#changes")).to_contain_text("/root/notes.txt", timeout=10000)
    # Browse /root, download the file, upload another one.
    page.goto(f"/containers/{name}/?tab=files&path=/root")
    expect(page.locator("#files")).to_contain_text("notes.txt")
    with page.expect_download() as download:
        page.locator("#files tr", has_text="notes.txt").get_by_role("link", name="download").click()
    saved = tmp_path / "notes.tar"
    download.value.save_as(saved)
    import tarfile

    with tarfile.open(saved) as tar:
        assert tar.extractfile("notes.txt").read() == b"secret\n"
    upload = tmp_path / "uploaded.txt"
    upload.write_text("from the browser\n")
    page.set_input_files("#upload-form input[name=file]", str(upload))
    page.click("#upload-form button")
    expect(page.locator("#files")).to_contain_text("uploaded.txt")
    # Commit: the new image appears with the changes.
    page.goto(f"/containers/{name}/?tab=commit")
    page.fill("#commit-form input[name=reference]", f"committed/{name}:v1")
    page.fill("#commit-form input[name=message]", "made in the browser")
    page.click("#commit-form button")
    expect(page.locator("#tags")).to_contain_text(f"committed/{name}:v1")
    expect(page.locator("#history")).to_contain_text("made in the browser")
    # Remove the container (forced: it is running).
    page.goto(f"/containers/{name}/")
    page.check("#actions input[name=force]")
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Remove").click()
    expect(page.locator("#containers")).not_to_contain_text(name)


def test_the_run_form_refuses_bad_options_with_reasons(logged_in_page):
    page = logged_in_page
    page.goto("/containers/run/")
    page.fill("#run-form input[name=image]", "busybox")
    page.fill("#run-form input[name=name]", "-bad name")
    page.fill("#run-form input[name=memory]", "lots")
    page.click("#run-form button[type=submit]")
    expect(page.locator("#run-errors")).to_contain_text("invalid memory size 'lots'")
    page.fill("#run-form input[name=memory]", "64m")
    page.click("#run-form button[type=submit]")
    expect(page.locator("#run-errors")).to_contain_text("Invalid container name")
    page.fill("#run-form input[name=name]", "")
    page.fill("#run-form input[name=image]", "no-such-image-here:v0")
    page.fill("#run-form input[name=memory]", "")
    page.click("#run-form button[type=submit]")
    expect(page.locator("#run-errors")).to_contain_text("No such image")
