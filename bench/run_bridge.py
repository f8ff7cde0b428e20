"""bench/run.py's bridge mode (issue 5): ``docker run --rm busybox true`` on each engine's default
bridge network, the engines side by side in one run.

Run by hand, as root, with the project's virtualenv (see bench/README.md)::

    .venv/bin/python bench/run.py --network bridge [--runs 20]

dockerd runs WITH a default bridge here, but its own: a bridge the bench creates (``bbench<hex>``,
a private /24 that overlaps no host route and none of Berth's subnets) and hands to dockerd with
``--bridge`` (dockerd refuses ``--bip`` together with ``--bridge``, and creates only ``docker0`` by
itself, so the bench makes the bridge and gives it its address), with ``--iptables=true``. Berth runs
as in bench/run.py (tests/live.py): its worker keeps pre-networked namespaces on its default bridge
(``berth0``). Then, interleaved, ``--runs`` times each after ``--warmup`` uncounted:

1. the CLI's ``docker run --rm busybox true`` (no ``--network``: the default bridge);
2. the same through the Engine API on one keep-alive connection: create (``NetworkMode: bridge``)
   -> start -> wait -> delete.

First, one ``docker run --rm busybox ip -4 addr show eth0`` per engine checks that the container
really got an address on that engine's bridge. No container sends anything: the only traffic is the
CLIs' and the API's, on loopback and unix sockets.

At the end, after both engines stopped: the bridge is deleted, and the iptables rules dockerd added
(those naming our bridge or subnet, the jumps to its chains) and its ``DOCKER*`` chains, when they
did not exist before the run, are removed; the FORWARD policy, ``ip_forward`` and
``bridge-nf-call-iptables`` are put back if dockerd changed them (``tests/support/dockerd.py``'s
``DockerBridge``, which the test of Berth beside dockerd's rules uses too). What is left (a bridge,
a chain, a namespace of ours) is reported.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import statistics
import subprocess
import tempfile
import time

from bench.pull import DockerSide, LoopFilesystem, finish_tempdir, log, stop_profilers
from bench.run import (
    IMAGE,
    TARGET_RUN_RATIO,
    Api,
    DockerEngine,
    Engine,
    _UnixConnection,
    _profiler,
    api_run_once,
    load_busybox,
    percentile,
    runtime_args,
    start_berth,
)
from tests.support.dockerd import DockerBridge

#
# The measurements
#


def _bridge_address(engine: Engine) -> str:
    out = engine.docker("run", "--rm", IMAGE, "ip", "-4", "addr", "show", "eth0", timeout=60).stdout
    found = re.search(r"inet (\d+\.\d+\.\d+\.\d+/\d+)", out)
    if not found:
        raise RuntimeError(f"{engine.name}: a default-network container has no IPv4 address on eth0: {out!r}")
    return found.group(1)


def measure_bridge_run(engines: list[Engine], runs: int, warmup: int) -> None:
    argv = ("run", "--rm", IMAGE, "true")
    for engine in engines:
        for _ in range(warmup):
            engine.docker(*argv, timeout=60)
            api_run_once(engine.api, "bridge")
        if engine.api.ids():
            raise RuntimeError(f"{engine.name}: docker run --rm left a container")
    for run in range(runs):
        for engine in (engines if run % 2 == 0 else list(reversed(engines))):
            started = time.monotonic()
            engine.docker(*argv, timeout=60)
            engine.cli_run.append(time.monotonic() - started)
    for run in range(runs):
        for engine in (engines if run % 2 == 0 else list(reversed(engines))):
            engine.api_run.append(api_run_once(engine.api, "bridge"))
    for engine in engines:
        log(f"{engine.name}: bridge docker run --rm median {statistics.median(engine.cli_run) * 1000:.0f} ms, "
            f"API run median {statistics.median(engine.api_run) * 1000:.0f} ms")


def report_bridge(engines: list[Engine], args, docker_version: str, addresses: dict[str, str],
                  bridge: DockerBridge) -> str:
    by = {e.name: e for e in engines}
    lines = [f"dockerd {docker_version}, --bridge={bridge.name} ({bridge.gateway}) --iptables=true; "
             f"{os.cpu_count()} CPUs; a container's eth0: "
             + ", ".join(f"{name} {address}" for name, address in addresses.items()),
             f"runs: {args.runs} interleaved (after {args.warmup} uncounted each)", "",
             "| measure (default bridge network) | " + " | ".join(e.name for e in engines) + " | berth/docker |",
             "|---|" + "---|" * len(engines) + "---|"]

    def row(label: str, get, target: float | None) -> None:
        values = {e.name: get(e) for e in engines}
        ratio = ""
        if "berth" in by and "docker" in by and values["docker"]:
            r = values["berth"] / values["docker"]
            ratio = f"{r:.2f}" + (f" (target <= {target:.2f}: {'meets' if r <= target else 'misses'})"
                                  if target else "")
        lines.append(f"| {label} | " + " | ".join(f"{values[e.name] * 1000:.0f}" for e in engines) + f" | {ratio} |")

    row("`docker run --rm busybox true`, median ms", lambda e: statistics.median(e.cli_run), TARGET_RUN_RATIO)
    row("same, p90 ms", lambda e: percentile(e.cli_run, 0.9), None)
    row("API create (NetworkMode bridge) -> start -> wait -> delete, median ms",
        lambda e: statistics.median(e.api_run), TARGET_RUN_RATIO)
    row("same, p90 ms", lambda e: percentile(e.api_run, 0.9), None)
    return "\n".join(lines)


def _berth_leftovers(berth: Engine) -> list[str]:
    netns_dir = os.path.join(os.environ.get("RUNTIME_RUN_ROOT", ""), "netns")
    left = [f"berth netns {e}" for e in os.listdir(netns_dir)] if os.path.isdir(netns_dir) else []
    pool_dir = os.path.join(berth.side.runtime_root, "networks", "pool")
    left += [f"berth pool entry {e}" for e in os.listdir(pool_dir)] if os.path.isdir(pool_dir) else []
    releasing = os.path.join(berth.side.runtime_root, "networks", "releasing")
    left += [f"berth queued release {e}" for e in os.listdir(releasing)
             if e.endswith(".json")] if os.path.isdir(releasing) else []
    return left


def main_bridge(args) -> int:
    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    tempdir = tempfile.mkdtemp(prefix="berth-bench-bridge-")
    workdir = tempdir
    loop = bridge = side = docker = berth = None
    spies: list[subprocess.Popen] = []
    try:
        if args.fs == "loop":
            loop = LoopFilesystem(tempdir)
            workdir = loop.mountpoint
        logdir = os.path.join(tempdir, "logs")
        os.makedirs(logdir)
        bridge = DockerBridge()
        log("starting dockerd (with its bridge) and Berth...")
        side = DockerSide(os.path.join(workdir, "docker"), logdir, "127.0.0.1:1", IMAGE,
                          network_args=(*bridge.dockerd_args(), *runtime_args(args.docker_runtime)))
        sock = side.env["DOCKER_HOST"][len("unix://"):]
        docker = DockerEngine("docker", side, Api(lambda: _UnixConnection(sock)), "containerd-shim-runc-v2",
                              os.path.join(side.workdir, "exec"))
        berth = start_berth(workdir, logdir)
        docker_version = (f"{docker.side.version} ({docker.side.driver}, {args.docker_runtime}); Berth's runtime "
                          f"{berth.default_runtime()}")
        load_busybox(berth, docker, tempdir)
        engines = [e for e in (docker, berth) if not args.only or e.name == args.only]
        for engine in engines:
            engine.remove_all()
        addresses = {e.name: _bridge_address(e) for e in engines}
        log(f"eth0 addresses: {addresses}")
        if "docker" in addresses and ipaddress.ip_interface(addresses["docker"]).ip not in bridge.subnet:
            raise RuntimeError(f"docker's container is not on {bridge.subnet}: {addresses['docker']}")
        if args.profile:
            os.makedirs(args.profile, exist_ok=True)
            spies = _profiler(berth, args.profile)
        measure_bridge_run(engines, args.runs, args.warmup)
        print(report_bridge(engines, args, docker_version, addresses, bridge))
        return 0
    finally:
        stop_profilers(spies)
        for engine in (e for e in (docker, berth) if e is not None):
            try:
                engine.remove_all()
            except Exception as exc:  # noqa: BLE001 - keep cleaning up
                log(f"{engine.name}: removing its containers failed: {exc}")
            engine.api.close()
        if berth is not None:
            berth.side.stop()
            left = _berth_leftovers(berth)
            if left:
                log(f"LEFT BEHIND by Berth: {left}")
        if side is not None:
            side.stop()
        if bridge is not None:
            left = bridge.remove()
            log(f"LEFT BEHIND: {left}" if left else f"removed bridge {bridge.name} and dockerd's iptables rules")
        finish_tempdir(tempdir, loop, args.keep)
