"""A pull killed halfway (worker crash) leaves a store that the next pull completes and verifies."""

import os
import signal
import subprocess
import sys
import time

from runtime.config import RuntimeConfig
from runtime.engine import Engine

PULL_SCRIPT = """
import sys
from runtime.config import RuntimeConfig
from runtime.engine import Engine
engine = Engine(RuntimeConfig(root=sys.argv[1]))
engine.pull(sys.argv[2], progress=lambda e: print(e.get("status"), flush=True))
"""


def test_a_pull_killed_midway_is_completed_by_the_next_pull(tmp_path, big_image, slow_registry):
    root = str(tmp_path / "root")
    ref = f"{slow_registry.host}/test/big:latest"
    child = subprocess.Popen([sys.executable, "-c", PULL_SCRIPT, root, ref], stdout=subprocess.PIPE, text=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    # Wait until the big layer is downloading, then kill the "worker" without warning.
    deadline = time.monotonic() + 30
    for line in child.stdout:
        if line.startswith("Downloading") or time.monotonic() > deadline:
            break
    time.sleep(1.5)
    child.send_signal(signal.SIGKILL)
    child.wait()
    engine = Engine(RuntimeConfig(root=root))
    assert engine.images.list() == [], "a killed pull must not leave an image record"
    partial = [n for n in os.listdir(os.path.join(root, "ingest")) if n.startswith("k-")]
    assert partial, "the keyed ingest of the interrupted download is kept for a resume"

    engine.start()  # what the worker does when it starts again
    before = slow_registry.bytes_sent
    events = []
    record = engine.pull(ref, progress=events.append)
    assert record.id == big_image.config_descriptor.digest
    # The layer was verified against its diff_id while it was unpacked; it is all there.
    top = engine.layers.get(record.chain_ids[-1])
    assert top.diff_id == big_image.diff_ids[-1]
    assert os.path.getsize(os.path.join(top.path, "data", "random.bin")) == 8 << 20
    # Resumed: the second pull fetched less than the whole 8 MB layer again.
    assert slow_registry.bytes_sent - before < (8 << 20)
