"""The browser terminal in real Chromium: type, resize, paste, leave and come back."""

import re
import subprocess
import time
import uuid

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.live, pytest.mark.browser]


def screen(page) -> str:
    """What the terminal shows (its whole buffer), as text."""
    return page.evaluate("""() => {
        const b = window.berthTerminal.buffer.active; const lines = [];
        for (let i = 0; i < b.length; i++) lines.push(b.getLine(i).translateToString(true));
        return lines.join("\\n");
    }""")


def wait_for_screen(page, pattern: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = screen(page)
        if re.search(pattern, text):
            return text
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} never appeared on the terminal:\n{screen(page)}")


def type_line(page, text: str) -> None:
    page.evaluate("(t) => window.berthTerminal.focus()", text)
    page.keyboard.type(text)
    page.keyboard.press("Enter")


@pytest.fixture
def running_container(berth, tmp_path):
    env = berth.docker_env(tmp_path / "docker")
    name = "term-" + uuid.uuid4().hex[:6]
    subprocess.run(["docker", "run", "-d", "--name", name, "busybox", "sleep", "600"], env=env, check=True,
                   capture_output=True)
    yield name
    subprocess.run(["docker", "rm", "-f", name], env=env, capture_output=True)


def test_type_resize_paste_and_rejoin(logged_in_page, running_container):
    page = logged_in_page
    page.set_viewport_size({"width": 1200, "height": 800})
    page.goto(f"/containers/{running_container}/terminal/")
    expect(page.locator("#term-status")).to_have_text("connected")
    type_line(page, "echo $((6*7))")
    wait_for_screen(page, r"(?m)^42\s*$")
    # Resize the window: stty size follows.
    type_line(page, "stty size")
    first = wait_for_screen(page, r"(?m)^\d+ \d+\s*$")
    first_size = re.findall(r"(?m)^(\d+ \d+)\s*$", first)[-1]
    page.set_viewport_size({"width": 800, "height": 500})
    time.sleep(0.5)
    type_line(page, "clear; stty size")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        sizes = re.findall(r"(?m)^(\d+ \d+)\s*$", screen(page))
        if sizes and sizes[-1] != first_size:
            break
        time.sleep(0.2)
    assert sizes and sizes[-1] != first_size, (first_size, sizes)
    # Paste 100 KB (lines of 99 characters) and get it all back.
    line = "x" * 99 + "\n"
    type_line(page, "cat > /tmp/pasted")
    page.evaluate("(t) => window.berthTerminal.paste(t)", line * 1024)
    page.keyboard.press("Control+D")
    type_line(page, "wc -c < /tmp/pasted")
    wait_for_screen(page, r"(?m)^102400\s*$", timeout=30)
    # Leave the page and come back: the same shell, with its recent output.
    type_line(page, "export MARK=still-here")
    page.goto("/")
    page.goto(f"/containers/{running_container}/terminal/")
    expect(page.locator("#term-status")).to_have_text("connected")
    type_line(page, "echo $MARK")
    wait_for_screen(page, r"(?m)^still-here\s*$")


def test_exit_ends_the_session_with_its_code(logged_in_page, running_container):
    page = logged_in_page
    page.goto(f"/containers/{running_container}/terminal/?cmd=sh")
    expect(page.locator("#term-status")).to_have_text("connected")
    type_line(page, "exit 3")
    expect(page.locator("#term-status")).to_have_text("exited (3)", timeout=15000)
