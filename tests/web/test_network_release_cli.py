"""The CNI DEL at a container's exit runs in the worker's background (issue 5), through the docker CLI.

The live worker's main process keeps the namespace pool and, with it, the keeper lock; containers
stop in its pool processes, which then queue their DEL (runtime.network.manager ``release``).
A published port must be free for the next container at once all the same.
"""

import fcntl
import os
import time
import uuid

import pytest

from tests.support.net import SERVE, fetch, free_port

pytestmark = pytest.mark.live


def test_exits_are_released_in_the_background_and_a_port_is_free_at_once(berth, docker):
    releasing = os.path.join(berth.env["RUNTIME_ROOT"], "networks", "releasing")
    # The worker keeps the pool, so it holds the keeper lock: the releases are queued for it.
    fd = os.open(os.path.join(releasing, ".keeper"), os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    tag = uuid.uuid4().hex[:6]
    port = free_port()
    first = docker("run", "-d", "--name", f"rel1-{tag}", "-p", f"127.0.0.1:{port}:80", "busybox", "sh", "-c",
                   SERVE).stdout.strip()
    assert fetch(f"http://127.0.0.1:{port}/") == f"hello from {first[:12]}\n"
    docker("rm", "-f", f"rel1-{tag}")
    second = docker("run", "-d", "--name", f"rel2-{tag}", "-p", f"127.0.0.1:{port}:80", "busybox", "sh", "-c",
                    SERVE).stdout.strip()
    assert fetch(f"http://127.0.0.1:{port}/") == f"hello from {second[:12]}\n"
    docker("rm", "-f", f"rel2-{tag}")
    for _ in range(3):
        docker("run", "--rm", "busybox", "true")
    deadline = time.monotonic() + 30
    while [e for e in os.listdir(releasing) if e.endswith(".json")]:
        assert time.monotonic() < deadline, f"queued releases not run: {os.listdir(releasing)}"
        time.sleep(0.1)
    # What they held is gone: no namespace but the pool's is left.
    netns_dir = os.path.join(berth.env.get("RUNTIME_RUN_ROOT", ""), "netns")
    if os.path.isdir(netns_dir):
        assert all(name.startswith("pool") for name in os.listdir(netns_dir)), os.listdir(netns_dir)
