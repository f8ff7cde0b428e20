"""``GET /containers/{id}/attach/ws``: Docker's websocket attach, with a token, no Origin needed."""

import subprocess
import time
import uuid

import pytest
from websockets.sync.client import connect

pytestmark = pytest.mark.live


def test_attach_ws_relays_stdin_and_output(berth, tmp_path):
    env = berth.docker_env(tmp_path / "docker")
    name = "ws-" + uuid.uuid4().hex[:6]
    subprocess.run(["docker", "run", "-d", "-it", "--name", name, "busybox", "sh"], env=env, check=True,
                   capture_output=True)
    try:
        url = berth.url.replace("http", "ws") + f"/v1.41/containers/{name}/attach/ws?stream=1&stdin=1&stdout=1"
        with connect(url, additional_headers={"Authorization": f"Bearer {berth.token}"}, open_timeout=10) as ws:
            ws.send(b"echo $((6*7))\n")
            seen = b""
            deadline = time.monotonic() + 15
            while b"42" not in seen.split(b"$((6*7))")[-1] and time.monotonic() < deadline:
                frame = ws.recv(timeout=15)
                seen += frame if isinstance(frame, bytes) else frame.encode()
        assert b"42" in seen.split(b"$((6*7))")[-1]
        # The container goes on after the socket closed (attach, not run).
        state = subprocess.run(["docker", "inspect", "--format", "{{.State.Running}}", name], env=env,
                               capture_output=True, text=True).stdout.strip()
        assert state == "true"
    finally:
        subprocess.run(["docker", "rm", "-f", name], env=env, capture_output=True)


def test_attach_ws_needs_a_valid_token(berth):
    import websockets

    url = berth.url.replace("http", "ws") + "/v1.41/containers/anything/attach/ws"
    with pytest.raises((websockets.exceptions.InvalidStatus, websockets.exceptions.ConnectionClosed)):
        with connect(url, additional_headers={"Authorization": "Bearer berth_wrong"}, open_timeout=10) as ws:
            ws.recv(timeout=5)
