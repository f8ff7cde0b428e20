"""crun under cgroup layouts this machine does not have itself: each case runs in a private mount
namespace (``unshare -m``) made from the host's, so nothing changes outside it.

A v1 host whose ``/sys/fs/cgroup/unified`` is an empty directory with no cgroup2 on it misleads crun:
it takes the directory for a hierarchy and writes ``cgroup.procs`` files into the tmpfs. Berth
mounts cgroup2 there first (``ContainerStore.crun_usable``); on a v1 host without the directory,
crun needs nothing.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIFIED = "/sys/fs/cgroup/unified"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="runs real containers: needs root"),
    pytest.mark.skipif(not shutil.which("crun"), reason="crun is not installed"),
    pytest.mark.skipif(os.path.exists("/sys/fs/cgroup/cgroup.controllers"), reason="a cgroup v2 host"),
]

# Run in the private namespace: the layout is made first (``LAYOUT``), then one busybox run.
RUN = textwrap.dedent("""
    import os, subprocess, sys
    sys.path.insert(0, {root!r})
    from runtime.config import RuntimeConfig
    from runtime.containers import ContainerConfig
    from runtime.engine import Engine
    from tests.support.starter import import_busybox

    {layout}
    engine = Engine(RuntimeConfig(root={base!r} + "/root", run_root={base!r} + "/run"))
    import_busybox(engine)
    store = engine.containers
    runtime = store.default_runtime()
    record = store.create(ContainerConfig(image="busybox", cmd=["sh", "-c", "echo ran"], network_mode="none"))
    store.start(record.id)
    code = store.wait(record.id, timeout=20)
    out = b"".join(line for _, line, _ in store.logs(record.id))
    store.remove(record.id)
    print(runtime, code, out.decode().strip(), os.path.ismount({unified!r}))
""")

# The unified directory left empty and unmounted (unmounted here if the host has cgroup2 on it).
STRAY = textwrap.dedent(f"""
    if os.path.ismount({UNIFIED!r}):
        subprocess.run(["umount", {UNIFIED!r}], check=True)
    if not os.path.isdir({UNIFIED!r}) or os.listdir({UNIFIED!r}):
        print("skip: no empty unified directory under the mount")
        sys.exit(0)
""")

# A tmpfs of its own at /sys/fs/cgroup with the host's v1 hierarchies bound into it, no unified.
V1_ONLY = textwrap.dedent("""
    import tempfile
    saved = tempfile.mkdtemp()
    subprocess.run(["mount", "--rbind", "/sys/fs/cgroup", saved], check=True)
    subprocess.run(["umount", "-l", "/sys/fs/cgroup"], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", "/sys/fs/cgroup"], check=True)
    for name in os.listdir(saved):
        if name != "unified" and os.path.ismount(os.path.join(saved, name)):
            os.mkdir("/sys/fs/cgroup/" + name)
            subprocess.run(["mount", "--bind", os.path.join(saved, name), "/sys/fs/cgroup/" + name], check=True)
""")


def run_in_namespace(layout: str) -> str:
    base = tempfile.mkdtemp(prefix="bl-", dir="/tmp")
    try:
        script = RUN.format(root=str(ROOT), layout=layout, base=base, unified=UNIFIED)
        proc = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", script],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                        f"umount -R {base}/root/containers/*/merged 2>/dev/null; true"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def files_under_stray_unified() -> list[str]:
    """Regular files in the tmpfs under the unified directory, as a private namespace sees it."""
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                           f"mountpoint -q {UNIFIED} && umount {UNIFIED}; find {UNIFIED} -type f"],
                          capture_output=True, text=True, timeout=30)
    return proc.stdout.split()


def test_crun_on_a_v1_host_with_an_unmounted_unified_directory():
    before = files_under_stray_unified()
    answer = run_in_namespace(STRAY)
    if answer.startswith("skip:"):
        pytest.skip(answer)
    # crun ran it, with cgroup2 mounted on the directory (in that namespace only) beforehand.
    assert answer == "crun 0 ran True"
    assert files_under_stray_unified() == before  # nothing written into the tmpfs beneath


def test_crun_on_a_v1_host_without_a_unified_directory():
    assert run_in_namespace(V1_ONLY) == "crun 0 ran False"
