"""Small network helpers of the live tests: a free loopback port, a fetch that waits for a server."""

import socket
import time
import urllib.request

# busybox httpd serving "hello from <hostname>" on port 80 of the container.
SERVE = "mkdir -p /www && echo \"hello from $(hostname)\" > /www/index.html && exec httpd -f -p 80 -h /www"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str, timeout: float = 15) -> str:
    """GET ``url``, retrying until it answers (a container's server takes a moment to listen)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return urllib.request.urlopen(url, timeout=2).read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
