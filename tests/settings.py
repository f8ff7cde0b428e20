"""Settings for the test suite: Berth's own settings, pointed at a private data dir, engine root and Redis.

The environment is set before project.settings is read, so the processes the live fixtures start
(Daphne, the Celery worker, manage.py) inherit the same private places.
"""

import os
import socket
import tempfile


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if "BERTH_TEST_DIR" not in os.environ:
    os.environ["BERTH_TEST_DIR"] = tempfile.mkdtemp(prefix="berth-test-")
    os.environ["BERTH_DATA_DIR"] = os.path.join(os.environ["BERTH_TEST_DIR"], "var")
    os.environ["RUNTIME_ROOT"] = os.path.join(os.environ["BERTH_TEST_DIR"], "runtime")
    os.environ["RUNTIME_RUN_ROOT"] = os.path.join(os.environ["BERTH_TEST_DIR"], "run")
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:{_free_port()}/0"
    os.environ["BERTH_NODE"] = "testnode"
    # The embedded DNS relays unknown names to a stub on loopback that tests start (tests/support/dns.py);
    # its port is held from now on, so nothing else takes it meanwhile.
    from tests.support.dns import reserve

    os.environ["BERTH_TEST_DNS_UPSTREAM"] = reserve()
    os.environ["BERTH_DNS_UPSTREAMS"] = os.environ["BERTH_TEST_DNS_UPSTREAM"]
    # Playwright's sync API runs an event loop in the test thread; tests never touch the ORM there.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

from project.settings import *  # noqa: E402,F401,F403
