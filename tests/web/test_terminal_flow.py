"""A terminal flood to a browser that does not keep up: the server holds back, its memory stays flat."""

import json
import subprocess
import time
import uuid

import pytest
from websockets.sync.client import connect

from tests.web.test_events_socket import session_cookie

pytestmark = pytest.mark.live


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_a_slow_page_holds_the_flood_back_without_growing_server_memory(berth, tmp_path):
    env = berth.docker_env(tmp_path / "docker")
    name = "flood-" + uuid.uuid4().hex[:6]
    subprocess.run(["docker", "run", "-d", "--name", name, "busybox", "sleep", "600"], env=env, check=True,
                   capture_output=True)
    daphne = next(p for p in berth.processes if p.name == "daphne").popen.pid
    try:
        cookie = session_cookie(berth)
        url = berth.url.replace("http", "ws") + f"/ws/containers/{name}/exec?cmd=sh&rows=24&cols=80"
        with connect(url, additional_headers={"Cookie": cookie}, origin=berth.url, open_timeout=10,
                     max_size=None) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "session"
            before = rss_kib(daphne)
            # 200 MB of output; this "page" renders nothing and acknowledges nothing for a while.
            ws.send(b"head -c 200000000 /dev/zero | tr '\\\\0' x; echo; echo FLOOD-DONE\n")
            received = 0
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                try:
                    frame = ws.recv(timeout=0.5)
                except TimeoutError:
                    continue
                received += len(frame)
            grown_mib = (rss_kib(daphne) - before) / 1024
            # Without acknowledgements the server sends about a window (1 MiB) and waits.
            assert received < 8 << 20, received
            assert grown_mib < 40, f"daphne grew by {grown_mib:.0f} MiB"
            # Acknowledge as a page would (what it got so far, then each frame): the rest flows, to the end.
            ws.send(json.dumps({"type": "ack", "bytes": received}))
            text = b""
            deadline = time.monotonic() + 120
            while b"FLOOD-DONE" not in text[-200:] and time.monotonic() < deadline:
                received += len(frame := ws.recv(timeout=30))
                text = (text + frame)[-400:]
                ws.send(json.dumps({"type": "ack", "bytes": received}))
            assert b"FLOOD-DONE" in text
            assert received > 200_000_000
    finally:
        subprocess.run(["docker", "rm", "-f", name], env=env, capture_output=True)
