"""Benchmark: `docker build` of a small Dockerfile, Berth against the real Docker engine (issue 7).

Run by hand, as root, with the project's virtualenv (see bench/README.md)::

    .venv/bin/python bench/build.py [--runs 3]

What it does:

1. Starts Docker's own ``dockerd`` (Debian's docker.io) with a private data root and socket, and a
   live Berth (tests/live.py: private Redis, Celery worker, Daphne, the front), both keeping their
   data on a fresh journaled ext4 on a loop device (bench/pull.py's ``LoopFilesystem``).
2. Gives dockerd Berth's offline starter image: ``docker save busybox:latest`` from Berth, ``docker
   load`` into dockerd (the same config and layer, so the same image id on both).
3. Writes a build context: a 6-step Dockerfile FROM busybox (ARG, RUN creating 200 files, COPY of a
   small directory, ENV, WORKDIR, RUN) and 24 small files (~50 KB).
4. For each engine, ``--runs`` rounds, the engines interleaved (who goes first rotates), each round:
   - **cold**: the built image removed (``docker rmi``) and the build cache dropped (``docker builder
     prune -af``), the base image kept; the script checks that only busybox is left;
   - **cached**: the same build again, ``--cached-repeat`` times (default 3, each counted: every
     step must come from the cache, same image id);
   - **one file changed**: one copied file gets new contents (new each time), build again.
   Each is timed from the CLI's start to its exit. Every build is ``--network none``: this dockerd
   has no bridge (``--bridge=none``, so it touches no host network), where its classic builder runs
   RUN with a loopback only anyway; Berth would otherwise give each RUN its CNI bridge network.
   The engines: ``berth`` (the classic builder API, which is all Berth has), ``classic`` (dockerd,
   ``DOCKER_BUILDKIT=0``) with the same docker CLI, and ``buildkit`` (dockerd's BuildKit through
   Debian's docker CLI 20.10, which speaks BuildKit's session protocol itself and needs no buildx
   plugin), when that works here.
5. Prints a table (median and min seconds, ratios against the classic builder), stops everything it
   started, and removes its temp dirs.

This is not a test: nothing here runs in the suite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.pull import BerthSide, DockerSide, LoopFilesystem, finish_tempdir, log, stop_profilers  # noqa: E402

BASE = "busybox:latest"
TAG = "bench/build:latest"
KINDS = ("cold", "cached", "changed")
# Issue 7: a cold build at most 0.6 of the classic builder's time, a cached rebuild no slower than it.
TARGETS = {"cold": 0.6, "cached": 1.0}
# Debian's docker.io CLI (20.10) drives BuildKit by itself; a newer CLI needs the buildx plugin.
BUILDKIT_CLI = "/usr/bin/docker"

DOCKERFILE = """\
FROM busybox
ARG VERSION=1
RUN mkdir -p /opt/data && \\
    for i in $(seq 1 200); do echo "file $i of version $VERSION" > /opt/data/f$i.txt; done
COPY app/ /app/
ENV APP_MODE=bench
WORKDIR /app
RUN cat /app/*.txt | wc -c > /app/size && ls /opt/data | wc -l > /app/count
"""
STEPS = 6  # after FROM
CHANGED_FILE = "app/changed.txt"


def write_context(directory: Path) -> None:
    directory.mkdir(parents=True)
    (directory / "Dockerfile").write_text(DOCKERFILE)
    app = directory / "app"
    app.mkdir()
    for n in range(23):
        line = f"line of file {n}: the quick brown fox jumps over the lazy dog\n"
        (app / f"file{n:02d}.txt").write_text(line * (n * 5 + 10))
    (directory / CHANGED_FILE).write_text("the original contents\n")


@dataclass
class Engine:
    """One builder under test, driven by a docker CLI."""

    name: str
    env: dict
    cli: str
    buildkit: bool
    base_id: str = ""
    times: dict = field(default_factory=lambda: {kind: [] for kind in KINDS})

    def docker(self, *args, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        result = subprocess.run([self.cli, *args], env=self.env, capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{self.name}: docker {' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def image_id(self, ref: str) -> str:
        return self.docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()

    def make_cold(self) -> None:
        """Remove the built image and the build cache, keep the base; check only the base is left."""
        if self.docker("image", "inspect", TAG, check=False).returncode == 0:
            self.docker("rmi", "-f", TAG)
        self.docker("image", "prune", "-f")  # the classic builder's steps, untagged now
        self.docker("builder", "prune", "-af")
        left = set(self.docker("images", "-aq", "--no-trunc").stdout.split())
        if left != {self.base_id}:
            raise RuntimeError(f"{self.name}: images left after rmi and builder prune: {sorted(left)} "
                               f"(the base is {self.base_id})")
        containers = self.docker("ps", "-aq").stdout.split()
        if containers:
            raise RuntimeError(f"{self.name}: containers left: {containers}")

    def build(self, context: Path) -> tuple[float, str]:
        """One ``docker build``: (seconds from the CLI's start to its exit, its output)."""
        started = time.monotonic()
        result = self.docker("build", "--network", "none", "-t", TAG, str(context))
        elapsed = time.monotonic() - started
        return elapsed, result.stdout + result.stderr

    def cache_hits(self, output: str) -> int:
        if self.buildkit:
            return output.count(" CACHED")
        return output.count("Using cache")


def engines_for(berth: BerthSide, docker: DockerSide, buildkit: bool) -> list[Engine]:
    berth_env = dict(berth.env, DOCKER_BUILDKIT="0")
    docker_env = dict(docker.env, DOCKER_BUILDKIT="0")
    out = [Engine("berth", berth_env, "docker", False), Engine("classic", docker_env, "docker", False)]
    if buildkit:
        out.append(Engine("buildkit", dict(docker.env, DOCKER_BUILDKIT="1", BUILDKIT_PROGRESS="plain"),
                          BUILDKIT_CLI, True))
    return out


def load_base(berth: BerthSide, docker: DockerSide, tempdir: str) -> str:
    """``docker save`` busybox from Berth, ``docker load`` it into dockerd; the ids must agree."""
    tar = os.path.join(tempdir, "busybox.tar")
    berth.docker("save", "-o", tar, BASE)
    docker.docker("load", "-i", tar)
    os.unlink(tar)
    ids = [side.docker("image", "inspect", "--format", "{{.Id}}", BASE).stdout.strip()
           for side in (berth, docker)]
    if ids[0] != ids[1]:
        raise RuntimeError(f"busybox differs after docker load: berth {ids[0]}, dockerd {ids[1]}")
    return ids[0]


def round_once(engine: Engine, context: Path, serial: int, counted: bool = True,
               cached_repeat: int = 1) -> dict[str, float]:
    """Cold build, cached rebuild (``cached_repeat`` times, each counted), rebuild after one file
    changed; check each did what it claims."""
    (context / CHANGED_FILE).write_text("the original contents\n")
    engine.make_cold()
    subprocess.run(["sync"], check=True)
    time.sleep(0.3)
    out: dict[str, float] = {}
    out["cold"], output = engine.build(context)
    if engine.cache_hits(output):
        raise RuntimeError(f"{engine.name}: the cold build used the cache:\n{output[-3000:]}")
    first = engine.image_id(TAG)
    cached = []
    for _ in range(max(1, cached_repeat)):
        seconds, output = engine.build(context)
        cached.append(seconds)
        second = engine.image_id(TAG)
        if second != first or (not engine.buildkit and engine.cache_hits(output) < STEPS):
            raise RuntimeError(f"{engine.name}: the rebuild was not fully cached ({first} -> {second}):\n"
                               f"{output[-3000:]}")
    out["cached"] = statistics.median(cached)
    (context / CHANGED_FILE).write_text(f"changed contents, round {serial}\n")
    out["changed"], output = engine.build(context)
    third = engine.image_id(TAG)
    hits = engine.cache_hits(output)
    # ARG and the first RUN (classic); BuildKit counts the first RUN only (ARG makes no vertex).
    if third == second or hits < (1 if engine.buildkit else 2) or hits >= STEPS:
        raise RuntimeError(f"{engine.name}: the one-file rebuild did not rebuild from COPY ({hits} hits):\n"
                           f"{output[-3000:]}")
    if counted:
        for kind in KINDS:
            engine.times[kind].extend(cached if kind == "cached" else [out[kind]])
    return out


def buildkit_works(engine: Engine, context: Path) -> str:
    """'' if BuildKit builds here, else why not."""
    if not os.path.exists(engine.cli):
        return f"{engine.cli} is missing"
    try:
        engine.make_cold()
        _, output = engine.build(context)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return str(exc).strip().splitlines()[-1][:300]
    return ""


def profile_berth(berth: BerthSide, engine: Engine, context: Path, path: str) -> None:
    """One uncounted cold build and one cached rebuild with py-spy recording the worker's tree."""
    engine.make_cold()
    spy = subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
                            "record", "--pid", str(berth.worker.popen.pid), "--subprocesses", "--threads",
                            "--idle", "--nonblocking", "--rate", "200", "--format", "raw", "--output", path],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)
        cold, _ = engine.build(context)
        cached, _ = engine.build(context)
    finally:
        stop_profilers([spy])
    log(f"berth: profile of a {cold:.2f}s cold build and a {cached:.2f}s cached one written to {path}")


def report(engines: list[Engine], runs: int, warmup: int, docker_version: str, buildkit_note: str,
           cached_repeat: int = 1) -> str:
    lines = [
        f"dockerd {docker_version}; {os.cpu_count()} CPUs; {runs} rounds each, interleaved, after "
        f"{warmup} uncounted, {cached_repeat} cached rebuilds a round; a {STEPS}-step Dockerfile FROM "
        f"busybox; load average at the end "
        f"{' '.join(open('/proc/loadavg').read().split()[:3])}",
        "",
        "| build | engine | median s | min s | runs (s) | /classic (medians) | /classic (mins) |",
        "|---|---|---|---|---|---|---|",
    ]
    by_name = {engine.name: engine for engine in engines}
    classic = by_name["classic"]
    for kind in KINDS:
        for engine in engines:
            times = engine.times[kind]
            ratio_med = statistics.median(times) / statistics.median(classic.times[kind])
            ratio_min = min(times) / min(classic.times[kind])
            lines.append(f"| {kind} | {engine.name} | {statistics.median(times):.3f} | {min(times):.3f} | "
                         f"{' '.join(f'{t:.3f}' for t in times)} | {ratio_med:.2f} | {ratio_min:.2f} |")
    lines.append("")
    berth = by_name["berth"]
    for kind, target in TARGETS.items():
        ratio = statistics.median(berth.times[kind]) / statistics.median(classic.times[kind])
        verdict = "meets" if ratio <= target else "misses"
        lines.append(f"{kind}: Berth/classic {ratio:.2f} (medians); target <= {target:.2f}: {verdict}")
    if "buildkit" in by_name:
        bk = by_name["buildkit"]
        lines.append("Berth/BuildKit (medians): " + ", ".join(
            f"{kind} {statistics.median(berth.times[kind]) / statistics.median(bk.times[kind]):.2f}"
            for kind in KINDS))
    else:
        lines.append(f"BuildKit: not measured ({buildkit_note})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3,
                        help="rounds (cold, cached, changed) per engine (default 3)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="uncounted rounds per engine first (default 1): a fresh daemon's first "
                             "build pays one-off costs")
    parser.add_argument("--cached-repeat", type=int, default=3,
                        help="cached rebuilds per round, each counted (default 3): a cached build takes "
                             "tens of milliseconds, so single samples are at the mercy of the machine's load")
    parser.add_argument("--no-buildkit", action="store_true", help="measure the classic builders only")
    parser.add_argument("--fs", choices=("loop", "tmp"), default="loop",
                        help="where the engines keep their data: a fresh journaled ext4 on a loop device "
                             "(default) or the temp dir's own filesystem")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs) at the end")
    parser.add_argument("--profile", metavar="FILE",
                        help="first run an uncounted Berth cold build and cached rebuild under py-spy and "
                             "write its raw stacks to FILE")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root (dockerd and Berth's worker need it)")

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)

    tempdir = tempfile.mkdtemp(prefix="berth-bench-build-")
    workdir = tempdir
    loop = None
    sides = []
    try:
        if args.fs == "loop":
            loop = LoopFilesystem(tempdir, size_gb=4)
            workdir = loop.mountpoint
            log(f"engines' data on a fresh ext4 at {workdir} ({loop.device})")
        logdir = os.path.join(tempdir, "logs")
        os.makedirs(logdir)
        context = Path(tempdir) / "context"
        write_context(context)
        log("starting dockerd...")
        # The registry address is only dockerd's --insecure-registry: nothing is pulled here.
        docker_side = DockerSide(os.path.join(workdir, "docker"), logdir, "127.0.0.1:1", BASE)
        sides.append(docker_side)
        docker_version = f"{docker_side.version} ({docker_side.driver})"
        log("starting Berth (redis, worker, daphne, front)...")
        berth_side = BerthSide(os.path.join(workdir, "berth"), logdir, BASE, None)
        sides.append(berth_side)
        base_id = load_base(berth_side, docker_side, tempdir)
        log(f"busybox in both engines: {base_id[:19]}")
        engines = engines_for(berth_side, docker_side, not args.no_buildkit)
        for engine in engines:
            engine.base_id = base_id
        buildkit_note = "--no-buildkit"
        if not args.no_buildkit:
            buildkit_note = buildkit_works(engines[-1], context)
            if buildkit_note:
                log(f"BuildKit does not work here: {buildkit_note}")
                engines.pop()
        for engine in engines:
            for n in range(args.warmup):
                out = round_once(engine, context, serial=-1 - n, counted=False)
                log(f"warm-up {engine.name:8}: " + "  ".join(f"{k} {v:5.2f}s" for k, v in out.items()))
        if args.profile:
            profile_berth(berth_side, engines[0], context, os.path.abspath(args.profile))
        for run in range(args.runs):
            shift = run % len(engines)
            for engine in engines[shift:] + engines[:shift]:
                out = round_once(engine, context, serial=run, cached_repeat=args.cached_repeat)
                log(f"run {run + 1}/{args.runs} {engine.name:8}: " +
                    "  ".join(f"{k} {v:6.3f}s" for k, v in out.items()))
        for engine in engines:
            engine.make_cold()
        print(report(engines, args.runs, args.warmup, docker_version, buildkit_note, args.cached_repeat))
        return 0
    finally:
        for side in reversed(sides):
            side.stop()
        finish_tempdir(tempdir, loop, args.keep)


if __name__ == "__main__":
    sys.exit(main())
