"""Benchmark: container speed and memory, Berth against the real Docker engine (issue 4).

Run by hand, as root, with the project's virtualenv (see bench/README.md)::

    .venv/bin/python bench/run.py [--runs 20]

Starts a private ``dockerd`` (Debian's docker.io, its own data root and socket) and a live Berth
(tests/live.py: private Redis, Celery worker, Daphne, the front listener), both keeping their data on
a fresh ext4 on a loop device (bench/pull.py's ``LoopFilesystem``), loads Berth's offline starter
image (``busybox:latest``) into dockerd with ``docker save`` / ``docker load``, then measures, the two
engines interleaved:

1. ``run --rm busybox true`` with ``--network none``: (a) the docker CLI's ``docker run --rm``,
   when Berth serves it (tried once; it needs the attach stream), and (b) the same flow through the
   Engine API on one keep-alive HTTP connection: create (NetworkMode none, AutoRemove false) ->
   start -> wait -> delete, timed end to end. Median and p90 over ``--runs``.
2. Create + start of 100 detached ``sleep 1000`` containers through the API: the total time.
3. Memory per idle running container, with 20 ``sleep 1000`` containers: the proportional set size
   (smaps_rollup Pss) of each container's monitor: Berth's conmon, Docker's containerd-shim-runc-v2;
   and the daemons' own Pss (dockerd, containerd; Berth's worker, Daphne, front).
4. ``docker ps -a`` with 500 created (not started) containers: the CLI's time, median of ``--ps-runs``.

Prints a table. Stops everything it started, removes every container, unmounts and deletes its temp
dir. This is not a test: nothing here runs in the suite.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.pull import (  # noqa: E402
    BerthSide,
    DockerSide,
    LoopFilesystem,
    finish_tempdir,
    log,
    stop_profilers,
    tree_pids,
)

IMAGE = "busybox:latest"
API = "/v1.41"
TARGET_RUN_RATIO = 1 / 3
TARGET_MEMORY_RATIO = 1 / 4
TARGET_PS_RATIO = 1.0


#
# Engine API over one keep-alive connection
#


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 120):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class Api:
    """The Engine API of one engine, on one HTTP/1.1 connection kept open between requests."""

    def __init__(self, connect, headers: dict | None = None):
        self._connect = connect
        self.headers = dict(headers or {})
        self.conn = connect()
        self.reconnects = 0

    def call(self, method: str, path: str, body=None, expect: tuple[int, ...] = (200, 201, 204)):
        headers = dict(self.headers)
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            try:
                self.conn.request(method, API + path, body=payload, headers=headers)
                response = self.conn.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionError, BrokenPipeError):
                # The server closed the kept-alive connection: open another (counted, reported).
                self.conn.close()
                self.conn = self._connect()
                self.reconnects += 1
                if attempt == 2:
                    raise
        if response.status not in expect:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:500]!r}")
        if response.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = self._connect()
            self.reconnects += 1
        return json.loads(data) if data and response.getheader("Content-Type", "").startswith(
            "application/json") else data

    def close(self) -> None:
        self.conn.close()

    # The verbs the benchmark uses.

    def create(self, cmd: list[str], *, name: str | None = None, network_mode: str = "none") -> str:
        body = {"Image": IMAGE, "Cmd": cmd, "HostConfig": {"NetworkMode": network_mode, "AutoRemove": False}}
        return self.call("POST", "/containers/create" + (f"?name={name}" if name else ""), body)["Id"]

    def start(self, cid: str) -> None:
        self.call("POST", f"/containers/{cid}/start")

    def wait(self, cid: str) -> int:
        answer = self.call("POST", f"/containers/{cid}/wait")
        if isinstance(answer, bytes):
            answer = json.loads(answer)
        return answer["StatusCode"]

    def delete(self, cid: str, force: bool = False) -> None:
        self.call("DELETE", f"/containers/{cid}" + ("?force=1" if force else ""))

    def ids(self) -> list[str]:
        return [c["Id"] for c in self.call("GET", "/containers/json?all=1")]


#
# Memory: proportional set sizes
#


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def processes(name: str, marker: str) -> list[int]:
    """The pids of processes called ``name`` whose command line holds ``marker`` (ours, not others')."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and comm(int(entry)) == name[:15] and marker in cmdline(int(entry)):
            found.append(int(entry))
    return found


#
# The two engines
#


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


@dataclass
class Engine(ABC):
    name: str
    side: object  # bench.pull.DockerSide / BerthSide
    api: Api
    monitor: str  # the per-container monitor process's name
    marker: str  # a string only our own monitors have on their command line
    cli_run: list[float] = field(default_factory=list)
    cli_run_error: str = ""
    api_run: list[float] = field(default_factory=list)
    create_start_100: list[float] = field(default_factory=list)
    ps: list[float] = field(default_factory=list)
    ps_api: list[float] = field(default_factory=list)
    memory: dict = field(default_factory=dict)

    def docker(self, *args, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return self.side.docker(*args, check=check, timeout=timeout)

    def remove_all(self) -> None:
        for cid in self.api.ids():
            self.api.delete(cid, force=True)

    @abstractmethod
    def daemon_pids(self) -> dict[str, list[int]]:
        ...


class DockerEngine(Engine):
    def daemon_pids(self) -> dict[str, list[int]]:
        pids = tree_pids(self.side.popen.pid)
        return {"dockerd": [self.side.popen.pid],
                "containerd": [p for p in pids if comm(p) == "containerd"]}


class BerthEngine(Engine):
    def default_runtime(self) -> str:
        """The OCI runtime Berth runs containers under (``docker info``'s DefaultRuntime)."""
        return self.docker("info", "--format", "{{.DefaultRuntime}}").stdout.strip()

    def daemon_pids(self) -> dict[str, list[int]]:
        out = {}
        for proc in self.side.processes:
            if proc.name != "redis":
                out[proc.name] = tree_pids(proc.popen.pid)
        return out


def runtime_args(runtime: str) -> tuple[str, ...]:
    """dockerd's flags for its OCI runtime: none for runc (its default), else the runtime added
    under its own name and made the default (``--add-runtime crun=/usr/bin/crun``)."""
    if runtime == "runc":
        return ()
    return ("--add-runtime", f"{runtime}={shutil.which(runtime) or runtime}", "--default-runtime", runtime)


def start_docker(workdir: str, logdir: str, runtime: str = "runc") -> DockerEngine:
    side = DockerSide(os.path.join(workdir, "docker"), logdir, "127.0.0.1:1", IMAGE,
                      network_args=(*DockerSide.NETWORK_ARGS, *runtime_args(runtime)))
    sock = side.env["DOCKER_HOST"][len("unix://"):]
    api = Api(lambda: _UnixConnection(sock))
    exec_root = os.path.join(side.workdir, "exec")
    return DockerEngine("docker", side, api, "containerd-shim-runc-v2", exec_root)


def start_berth(workdir: str, logdir: str) -> BerthEngine:
    side = BerthSide(os.path.join(workdir, "berth"), logdir, IMAGE, image=None)
    port = int(side.env["DOCKER_HOST"].rsplit(":", 1)[1])
    token = json.loads((Path(side.env["DOCKER_CONFIG"]) / "config.json").read_text())["HttpHeaders"]["Authorization"]
    api = Api(lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=120), {"Authorization": token})
    return BerthEngine("berth", side, api, "conmon", side.runtime_root)


def load_busybox(berth: Engine, docker: Engine, tempdir: str) -> str:
    """Give dockerd Berth's starter image: docker save from Berth, docker load into dockerd (the same
    layer and config); if Berth cannot save, the same rootfs through docker import."""
    tar = os.path.join(tempdir, "busybox.tar")
    saved = berth.docker("save", "-o", tar, IMAGE, check=False)
    if saved.returncode == 0:
        docker.docker("load", "-i", tar)
        how = "docker save (Berth) | docker load (dockerd)"
    else:
        from runtime.starter import STARTER_CHANGES, write_rootfs

        with open(tar, "wb") as f:
            write_rootfs(f)
        changes = [arg for change in STARTER_CHANGES for arg in ("--change", change)]
        docker.docker("import", *changes, tar, IMAGE)
        how = f"runtime/starter rootfs | docker import (Berth's save failed: {saved.stderr.strip()[:200]})"
    os.unlink(tar)
    ids = [e.docker("image", "inspect", "--format", "{{.Id}}", IMAGE).stdout.strip() for e in (berth, docker)]
    log(f"busybox in dockerd: {how}; image ids {ids[0][:19]} (berth) {ids[1][:19]} (docker)")
    return how


#
# The measurements
#


def measure_cli_run(engines: list[Engine], runs: int) -> None:
    argv = ("run", "--rm", "--network", "none", IMAGE, "true")
    usable = []
    for engine in engines:
        try:
            result = engine.docker(*argv, check=False, timeout=60)
            ok = result.returncode == 0
            error = (result.stderr.strip().splitlines() or ["exit code %d" % result.returncode])[-1]
        except subprocess.TimeoutExpired:
            ok, error = False, "timed out after 60 s"
        if ok and not engine.api.ids():
            usable.append(engine)
        else:
            engine.cli_run_error = "not available yet" + (f" ({error[:160]})" if not ok else " (--rm left it)")
            log(f"{engine.name}: docker run --rm: {engine.cli_run_error}")
            engine.remove_all()
    for run in range(runs):
        for engine in (usable if run % 2 == 0 else list(reversed(usable))):
            started = time.monotonic()
            engine.docker(*argv, timeout=60)
            engine.cli_run.append(time.monotonic() - started)
    for engine in usable:
        log(f"{engine.name}: docker run --rm median {statistics.median(engine.cli_run) * 1000:.0f} ms")


def api_run_once(api: Api, network_mode: str = "none") -> float:
    """One create -> start -> wait -> delete of ``busybox true``, timed end to end."""
    started = time.monotonic()
    cid = api.create(["true"], network_mode=network_mode)
    api.start(cid)
    code = api.wait(cid)
    api.delete(cid)
    elapsed = time.monotonic() - started
    if code != 0:
        raise RuntimeError(f"busybox true exited {code}")
    return elapsed


def measure_api_run(engines: list[Engine], runs: int, warmup: int) -> None:
    for engine in engines:
        for _ in range(warmup):
            api_run_once(engine.api)
    for run in range(runs):
        for engine in (engines if run % 2 == 0 else list(reversed(engines))):
            engine.api_run.append(api_run_once(engine.api))
    for engine in engines:
        log(f"{engine.name}: API run median {statistics.median(engine.api_run) * 1000:.0f} ms "
            f"(reconnects {engine.api.reconnects})")


def start_detached(engine: Engine, count: int) -> float:
    started = time.monotonic()
    for _ in range(count):
        engine.api.start(engine.api.create(["sleep", "1000"]))
    return time.monotonic() - started


def measure_create_start(engines: list[Engine], count: int, rounds: int) -> None:
    for run in range(rounds):
        for engine in (engines if run % 2 == 0 else list(reversed(engines))):
            elapsed = start_detached(engine, count)
            engine.create_start_100.append(elapsed)
            log(f"{engine.name}: {count} create+start in {elapsed:.2f}s")
            engine.remove_all()


def measure_memory(engines: list[Engine], count: int, settle: float) -> None:
    for engine in engines:
        before = {name: sum(pss_kb(p) for p in pids) for name, pids in engine.daemon_pids().items()}
        start_detached(engine, count)
        time.sleep(settle)
        monitors = processes(engine.monitor, engine.marker)
        if len(monitors) != count:
            raise RuntimeError(f"{engine.name}: {len(monitors)} {engine.monitor} processes for {count} containers")
        pss = [pss_kb(p) for p in monitors]
        after = {name: sum(pss_kb(p) for p in pids) for name, pids in engine.daemon_pids().items()}
        runtimes = processes("runc", engine.side.workdir) + processes("crun", engine.side.workdir)
        engine.memory = {"count": count, "monitor_kb": pss, "daemons_before": before, "daemons_after": after,
                         "runc": len(runtimes)}
        log(f"{engine.name}: {engine.monitor} Pss per container {statistics.mean(pss):.0f} kB "
            f"(min {min(pss)}, max {max(pss)}); daemons {after} kB")
        engine.remove_all()


def measure_ps(engines: list[Engine], count: int, runs: int) -> None:
    for engine in engines:
        started = time.monotonic()
        for _ in range(count):
            engine.api.create(["true"])
        log(f"{engine.name}: {count} creates in {time.monotonic() - started:.1f}s")
    for run in range(runs):
        for engine in (engines if run % 2 == 0 else list(reversed(engines))):
            started = time.monotonic()
            result = engine.docker("ps", "-a")
            engine.ps.append(time.monotonic() - started)
            lines = len(result.stdout.strip().splitlines()) - 1
            if lines != count:
                raise RuntimeError(f"{engine.name}: docker ps -a listed {lines} containers, not {count}")
            started = time.monotonic()
            engine.api.call("GET", "/containers/json?all=1")
            engine.ps_api.append(time.monotonic() - started)
    for engine in engines:
        log(f"{engine.name}: docker ps -a median {statistics.median(engine.ps) * 1000:.0f} ms")
        engine.remove_all()


#
# Report
#


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f}" if values else "-"


def _p90(values: list[float]) -> str:
    return f"{percentile(values, 0.9) * 1000:.0f}" if values else "-"


def _verdict(ratio: float, target: float) -> str:
    return f"{ratio:.2f} (target <= {target:.2f}: {'meets' if ratio <= target else 'misses'})"


def report(engines: list[Engine], args, docker_version: str, image_how: str) -> str:
    by = {e.name: e for e in engines}
    lines = [f"dockerd {docker_version}; {os.cpu_count()} CPUs; busybox into dockerd by {image_how}",
             f"runs: {args.runs} interleaved (after {args.warmup} uncounted each); "
             f"create+start: {args.count} containers x {args.rounds}; memory: {args.idle} idle containers; "
             f"ps -a: {args.ps_containers} created containers, {args.ps_runs} runs", "",
             "| measure | " + " | ".join(e.name for e in engines) + " | berth/docker |",
             "|---|" + "---|" * len(engines) + "---|"]

    def row(label: str, values: dict[str, str], ratio: str = "") -> None:
        lines.append(f"| {label} | " + " | ".join(values.get(e.name, "-") for e in engines) + f" | {ratio} |")

    def ratio_of(get, target: float | None) -> str:
        if "berth" not in by or "docker" not in by:
            return ""
        b, d = get(by["berth"]), get(by["docker"])
        if b is None or d is None or not d:
            return ""
        return _verdict(b / d, target) if target else f"{b / d:.2f}"

    row("`docker run --rm --network none busybox true`, median ms",
        {e.name: (_ms(e.cli_run) if e.cli_run else e.cli_run_error or "-") for e in engines},
        ratio_of(lambda e: statistics.median(e.cli_run) if e.cli_run else None, TARGET_RUN_RATIO))
    row("same, p90 ms", {e.name: _p90(e.cli_run) for e in engines})
    row("API create -> start -> wait -> delete, median ms", {e.name: _ms(e.api_run) for e in engines},
        ratio_of(lambda e: statistics.median(e.api_run) if e.api_run else None, TARGET_RUN_RATIO))
    row("same, p90 ms", {e.name: _p90(e.api_run) for e in engines},
        ratio_of(lambda e: percentile(e.api_run, 0.9) if e.api_run else None, None))
    row(f"API create + start of {args.count} `sleep 1000`, s",
        {e.name: " ".join(f"{t:.2f}" for t in e.create_start_100) for e in engines},
        ratio_of(lambda e: statistics.median(e.create_start_100) if e.create_start_100 else None, None))

    def per_container(e: Engine):
        return statistics.mean(e.memory["monitor_kb"]) if e.memory else None

    row("Pss per idle container's monitor, kB (conmon / containerd-shim-runc-v2)",
        {e.name: f"{per_container(e):.0f}" for e in engines if e.memory},
        ratio_of(per_container, TARGET_MEMORY_RATIO))
    for e in engines:
        if e.memory:
            after, before = e.memory["daemons_after"], e.memory["daemons_before"]
            text = ", ".join(f"{k} {after[k] / 1024:.0f} MB ({(after[k] - before.get(k, 0)) / 1024:+.1f})"
                             for k in after)
            row(f"{e.name}: daemons' Pss with {args.idle} running (growth from none)", {e.name: text})
            row(f"{e.name}: monitors' total Pss, MB; runc/crun processes left", {
                e.name: f"{sum(e.memory['monitor_kb']) / 1024:.1f}; {e.memory['runc']}"})
    row(f"`docker ps -a` with {args.ps_containers} containers, median ms", {e.name: _ms(e.ps) for e in engines},
        ratio_of(lambda e: statistics.median(e.ps) if e.ps else None, TARGET_PS_RATIO))
    row("same, GET /containers/json?all=1 alone, median ms", {e.name: _ms(e.ps_api) for e in engines},
        ratio_of(lambda e: statistics.median(e.ps_api) if e.ps_api else None, None))
    return "\n".join(lines)


def _profiler(engine: Engine, outdir: str) -> list[subprocess.Popen]:
    """py-spy on each Python process of Berth (worker tree, Daphne, front): raw collapsed stacks."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    procs = []
    for proc in engine.side.processes:
        if proc.name == "redis":
            continue
        out = os.path.join(outdir, f"{proc.name}.stacks")
        procs.append(subprocess.Popen([spy, "record", "--pid", str(proc.popen.pid), "--subprocesses", "--idle",
                                       "--nonblocking", "--rate", "250", "--format", "raw", "--output", out],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(2)
    return procs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="run latency samples per engine (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="uncounted API runs per engine first (default 3)")
    parser.add_argument("--count", type=int, default=100, help="containers created and started (default 100)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of --count create+start (default 1)")
    parser.add_argument("--idle", type=int, default=20, help="idle containers for the memory figure (default 20)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before memory is read (default 3)")
    parser.add_argument("--ps-containers", type=int, default=500, help="created containers for ps -a (default 500)")
    parser.add_argument("--ps-runs", type=int, default=5, help="docker ps -a runs per engine (default 5)")
    parser.add_argument("--only", choices=("berth", "docker"), help="measure one engine only")
    parser.add_argument("--phases", default="run,memory,create,ps",
                        help="which measurements, comma-separated (default run,memory,create,ps)")
    parser.add_argument("--fs", choices=("loop", "tmp"), default="loop",
                        help="engines' data on a fresh journaled ext4 on a loop device (default), or the temp dir")
    parser.add_argument("--profile", metavar="DIR",
                        help="record Berth's Python processes with py-spy (raw stacks, one file each) into DIR; "
                             "slows Berth down: the figures of such a run do not count")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs) at the end")
    parser.add_argument("--network", choices=("none", "bridge"), default="none",
                        help="bridge: only `docker run --rm busybox true` (and its API flow) on each engine's "
                             "default bridge network, dockerd with a bridge of its own (bench/run_bridge.py)")
    parser.add_argument("--berth-runtime", choices=("auto", "runc", "crun"), default="auto",
                        help="Berth's default OCI runtime (BERTH_DEFAULT_RUNTIME; default auto: crun where it "
                             "can run, else runc)")
    parser.add_argument("--docker-runtime", choices=("runc", "crun"), default="runc",
                        help="dockerd's default OCI runtime (default runc, as installed)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root (dockerd and Berth's worker need it)")
    os.environ["BERTH_DEFAULT_RUNTIME"] = args.berth_runtime
    if args.network == "bridge":
        from bench.run_bridge import main_bridge

        return main_bridge(args)
    phases = set(args.phases.split(","))

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)

    tempdir = tempfile.mkdtemp(prefix="berth-bench-run-")
    workdir = tempdir
    loop = None
    engines: list[Engine] = []
    spies: list[subprocess.Popen] = []
    try:
        if args.fs == "loop":
            loop = LoopFilesystem(tempdir)
            workdir = loop.mountpoint
        logdir = os.path.join(tempdir, "logs")
        os.makedirs(logdir)
        log("starting dockerd and Berth...")
        docker = start_docker(workdir, logdir, args.docker_runtime)
        engines.append(docker)
        berth = start_berth(workdir, logdir)
        engines.append(berth)
        docker_version = (f"{docker.side.version} ({docker.side.driver}, {args.docker_runtime}); Berth's runtime "
                          f"{berth.default_runtime()}")
        image_how = load_busybox(berth, docker, tempdir)
        if args.only:
            engines = [e for e in engines if e.name == args.only]
        for engine in engines:
            engine.remove_all()
        if args.profile:
            os.makedirs(args.profile, exist_ok=True)
            spies = _profiler(berth, args.profile)
        if "run" in phases:
            measure_cli_run(engines, args.runs)
            measure_api_run(engines, args.runs, args.warmup)
        if "memory" in phases:
            measure_memory(engines, args.idle, args.settle)
        if "create" in phases:
            measure_create_start(engines, args.count, args.rounds)
        if "ps" in phases:
            measure_ps(engines, args.ps_containers, args.ps_runs)
        print(report(engines, args, docker_version, image_how))
        return 0
    finally:
        stop_profilers(spies)
        all_engines = [e for e in (locals().get("docker"), locals().get("berth")) if e is not None]
        for engine in all_engines:
            try:
                engine.remove_all()
            except Exception as exc:  # noqa: BLE001 - keep cleaning up
                log(f"{engine.name}: removing its containers failed: {exc}")
            engine.api.close()
        for engine in reversed(all_engines):
            engine.side.stop()
        finish_tempdir(tempdir, loop, args.keep)


if __name__ == "__main__":
    sys.exit(main())
