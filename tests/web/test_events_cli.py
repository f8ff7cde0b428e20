"""``docker events`` against Berth shows containers starting and dying as they do."""

import contextlib
import subprocess
import time
import uuid

import pytest

pytestmark = pytest.mark.live


@contextlib.contextmanager
def events(env, name: str, fmt: str):
    """``docker events`` of the container ``name`` in ``fmt``; ``until(word)`` reads its lines
    until one has ``word`` (15 s at most) and returns them all."""
    watcher = subprocess.Popen(["docker", "events", "--filter", f"container={name}", "--format", fmt],
                               env=env, stdout=subprocess.PIPE, text=True)
    lines = []

    def until(word: str) -> list[str]:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(word in line for line in lines):
            lines.append(watcher.stdout.readline().strip())
        return lines

    try:
        time.sleep(1.0)  # subscribed
        yield until
    finally:
        watcher.kill()


def test_docker_events_streams_container_lifecycle(berth, tmp_path):
    env = berth.docker_env(tmp_path / "docker")
    name = "ev-" + uuid.uuid4().hex[:6]
    try:
        with events(env, name, "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}") as until:
            subprocess.run(["docker", "run", "-d", "--name", name, "busybox", "sh", "-c",
                            "sleep 0.5; exit 2"], env=env, check=True, capture_output=True)
            subprocess.run(["docker", "wait", name], env=env, check=True, capture_output=True)
            lines = until("die")
        assert f"container start {name}" in lines
        assert f"container die {name}" in lines
    finally:
        subprocess.run(["docker", "rm", "-f", name], env=env, capture_output=True)


def test_docker_run_rm_dies_with_its_code_then_is_destroyed(berth, tmp_path):
    env = berth.docker_env(tmp_path / "docker")
    name = "evrm-" + uuid.uuid4().hex[:6]
    with events(env, name, "{{.Action}} {{.Actor.Attributes.exitCode}}") as until:
        run = subprocess.run(["docker", "run", "--rm", "--name", name, "busybox", "sh", "-c", "exit 4"],
                             env=env, capture_output=True, text=True)
        assert run.returncode == 4, run.stderr
        lines = until("destroy")
    actions = [line.split()[0] for line in lines if line]
    assert actions.index("start") < actions.index("die") < actions.index("destroy"), lines
    assert "die 4" in lines
