"""Benchmark: interactive terminals (issue 6), Berth against the real Docker engine.

Run by hand, as root, with the project's virtualenv (see bench/README.md)::

    .venv/bin/python bench/terminal.py [--keys 1000] [--mb 100]

Starts a private ``dockerd`` (Debian's docker.io) and a live Berth (tests/live.py: private Redis,
Celery worker, Daphne, the front listener) with bench/pull.py's helpers, gives dockerd Berth's
offline starter image (``docker save`` | ``docker load``), starts one ``busybox sleep`` container in
each, then measures:

1. Keystroke-to-echo latency: a busybox ``sh`` is opened, its prompt awaited, then ``--keys`` times
   one byte (``a``) is written and the clock stops when its echo (the shell's line editor echoes
   it) comes back; every ``LINE_KEYS`` keys the line is ended untimed (it is a ``#`` comment). Paths:
   Berth's browser terminal (the websocket ``/ws/containers/<id>/exec``, logged in through the
   login form, Origin = the server's URL), ``docker exec -it`` against Berth (the front listener)
   and against dockerd (the CLI on a pseudo-terminal made with os.openpty), and ``sh`` on a host
   pseudo-terminal for reference. p50, p90, p99 and max.
2. Streaming ``--mb`` MB through a TTY: ``head -c N /dev/zero | tr '\\0' x`` typed into the same
   kinds of session, timed from the command's Enter until the N-th ``x`` arrived; and
   ``docker run -t --rm`` of the same command against each engine, timed from the CLI's start (and
   from its first ``x``) until the last ``x``.

Prints tables. Stops everything it started, removes the containers and its temp dir. This is not a
test: nothing here runs in the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import re
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
import uuid
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.pull import (  # noqa: E402
    BerthSide,
    DockerSide,
    RssSampler,
    Side,
    _unmount_under,
    log,
    stop_profilers,
    tree_cpu_seconds,
    tree_rss_kb,
)

IMAGE = "busybox:latest"
PROMPT = b"bench$ "
SET_PROMPT = b"PS1='bench''$ '\r"  # the echo of this line does not contain the prompt itself
LINE_KEYS = 50  # keys per line before it is ended (the editor's line stays short, no wrapping)
ROWS, COLS = 40, 200
TIMEOUT = 30.0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def stream_command(total: int) -> bytes:
    return f"head -c {total} /dev/zero | tr '\\0' x".encode()


#
# Sessions: something that sends bytes and receives the terminal's output
#


class PtySession:
    """A command on a host pseudo-terminal (its controlling terminal), read with os.read."""

    def __init__(self, argv: list[str], env: dict | None = None):
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        self.proc = subprocess.Popen(argv, env=env, stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True,
                                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.first_at = None

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def recv(self, timeout: float = TIMEOUT) -> bytes:
        if not select.select([self.master], [], [], timeout)[0]:
            raise TimeoutError("no output")
        try:
            data = os.read(self.master, 1 << 20)
        except OSError:  # EIO: the other side is gone
            data = b""
        if not data:
            raise EOFError("the terminal closed")
        return data

    def count_x(self, seen: int, total: int) -> bytes:
        """Read until ``total`` x's in all (``seen`` already); answer the last chunk."""
        chunk = b""
        while seen < total:
            chunk = self.recv()
            seen += chunk.count(b"x")
        return chunk

    def close(self) -> None:
        if self.proc.poll() is None:
            with _suppress():
                self.send(b"\x03exit\r")
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with _suppress():
            while self.recv(0.05):
                pass
        os.close(self.master)


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], Exception)


class WebSocketSession:
    """Berth's browser terminal: binary frames both ways, text frames for JSON control messages.

    The websockets asyncio client runs on a loop of its own; ``send``/``recv`` are called from
    this one thread through ``loop.run_until_complete`` (no thread hop per message)."""

    def __init__(self, url: str, cookie: str, origin: str):
        from websockets.asyncio.client import connect

        self.loop = asyncio.new_event_loop()
        self.ws = self.loop.run_until_complete(connect(
            url, additional_headers={"Cookie": cookie}, origin=origin, open_timeout=30, max_size=None,
            max_queue=64))
        extensions = [e.name for e in self.ws.protocol.extensions]
        self.compression = ",".join(extensions) or "none"

    def send(self, data: bytes) -> None:
        self.loop.run_until_complete(self.ws.send(data))

    async def _recv(self) -> bytes:
        while True:
            message = await self.ws.recv()
            if isinstance(message, bytes):
                return message
            control = json.loads(message)
            if control.get("type") in ("exit", "error"):
                raise EOFError(f"the session ended: {control}")

    def recv(self, timeout: float = TIMEOUT) -> bytes:
        return self.loop.run_until_complete(asyncio.wait_for(self._recv(), timeout))

    async def _count_x(self, seen: int, total: int) -> bytes:
        chunk = b""
        while seen < total:
            chunk = await self._recv()
            seen += chunk.count(b"x")
        return chunk

    def count_x(self, seen: int, total: int) -> bytes:
        """As PtySession.count_x, in one coroutine (no task per message: the client stays cheap)."""
        return self.loop.run_until_complete(asyncio.wait_for(self._count_x(seen, total), 600))

    def close(self) -> None:
        with _suppress():
            self.send(b"\x03exit\r")
            time.sleep(0.2)
        with _suppress():
            self.loop.run_until_complete(asyncio.wait_for(self.ws.close(), 5))
        self.loop.close()


def expect(session, pattern: bytes, buffer: bytes = b"", timeout: float = TIMEOUT) -> bytes:
    """Read until ``pattern`` (a regex) matches; answer what followed the match."""
    deadline = time.monotonic() + timeout
    while True:
        m = re.search(pattern, buffer)
        if m:
            return buffer[m.end():]
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{pattern!r} never came: {buffer[-300:]!r}")
        try:
            buffer += session.recv(left)
        except (TimeoutError, asyncio.TimeoutError):
            raise TimeoutError(f"{pattern!r} never came: {buffer[-300:]!r}") from None


def ready_shell(session) -> None:
    """Wait for the first prompt, then set ours and wait for it."""
    expect(session, rb"[#$] $|[#$] \x1b")
    time.sleep(0.2)
    session.send(SET_PROMPT)
    rest = expect(session, re.escape(PROMPT))
    # Drain anything left (a second prompt, a late resize redraw).
    time.sleep(0.2)
    while rest:
        try:
            rest = session.recv(0.2)
        except TimeoutError:
            break


def keystrokes(session, count: int) -> list[float]:
    """``count`` keys, one at a time; the seconds from each write until its echo came back."""
    times = []
    while len(times) < count:
        session.send(b"#")
        expect(session, rb"#")
        for _ in range(min(LINE_KEYS, count - len(times))):
            started = time.perf_counter()
            session.send(b"a")
            got = b""
            while b"a" not in got:
                got += session.recv()
            times.append(time.perf_counter() - started)
        session.send(b"\r")
        expect(session, re.escape(PROMPT))
    return times


def stream(session, total: int) -> float:
    """Type the flood command, press Enter; seconds until the ``total``-th ``x`` arrived."""
    command = stream_command(total)
    session.send(command)
    expect(session, re.escape(command[-8:]))
    started = time.perf_counter()
    session.send(b"\r")
    buffer = b""
    while b"\n" not in buffer:  # the echo of the Enter; the output starts after it
        buffer += session.recv()
    chunk = buffer.split(b"\n", 1)[1]
    seen = chunk.count(b"x")
    try:
        chunk = session.count_x(seen, total) or chunk
    except Exception as e:
        raise RuntimeError(f"the stream broke after {time.perf_counter() - started:.2f}s: {e}") from e
    elapsed = time.perf_counter() - started
    expect(session, re.escape(PROMPT), chunk[chunk.rfind(b"x") + 1:])
    return elapsed


def run_t(side: Side, total: int) -> tuple[float, float]:
    """``docker run -t --rm busybox sh -c <flood>`` on a host PTY: (s from start, s from first x)."""
    started = time.perf_counter()
    session = PtySession(["docker", "run", "-t", "--rm", "--network", "none", IMAGE, "sh", "-c",
                          stream_command(total).decode()], side.env)
    seen = 0
    first = None
    try:
        while seen < total:
            n = session.recv().count(b"x")
            if n and first is None:
                first = time.perf_counter()
            seen += n
        done = time.perf_counter()
        session.proc.wait(30)
    finally:
        session.close()
    return done - started, done - first


#
# Engines
#


def login_cookie(server) -> str:
    """Log in through the login form, as a browser does; answer the Cookie header."""
    status, headers, body = server.request("GET", "/accounts/login/", token=False)
    csrf = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', body).group(1).decode()
    cookie = headers["Set-Cookie"].split(";")[0]
    form = f"username={server.username}&password={server.password}&csrfmiddlewaretoken={csrf}"
    status, headers, _ = server.request(
        "POST", "/accounts/login/", body=form.encode(), token=False,
        headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded",
                 "Referer": server.url + "/accounts/login/"})
    if status != 302:
        raise RuntimeError(f"login failed: {status}")
    return "; ".join(c.split(";")[0] for c in headers["Set-Cookie"].split(", ") if "=" in c.split(";")[0])


class Berth(BerthSide):
    def __init__(self, workdir: str, logdir: str):
        from tests import live

        super().__init__(workdir, logdir, IMAGE, image=None)
        port = int(self.env["DOCKER_HOST"].rsplit(":", 1)[1])
        self.url = f"http://127.0.0.1:{port}"
        self.server = live.LiveServer(url=self.url, port=port, token="")  # the admin's login, for the form

    def websocket(self, container_id: str) -> WebSocketSession:
        cookie = login_cookie(self.server)
        url = (self.url.replace("http", "ws") + f"/ws/containers/{container_id}/exec"
               f"?rows={ROWS}&cols={COLS}&cmd={quote('/bin/sh')}")
        return WebSocketSession(url, cookie, self.url)

    def stop(self) -> None:
        """Stop the processes, then DEL the worker's pre-networked namespaces: it leaves them (and
        their leases in the host-wide /run/berth/cni/ipam) behind when it stops."""
        super().stop()
        from runtime.config import RuntimeConfig
        from runtime.engine import Engine

        try:
            Engine(RuntimeConfig(root=self.runtime_root, run_root=os.environ["RUNTIME_RUN_ROOT"])).networks.stop_pool()
        except Exception as e:  # noqa: BLE001
            log(f"could not release the network pool: {e}")

    def daemon_pids(self) -> dict[str, int]:
        return {p.name: p.popen.pid for p in self.processes if p.name in ("daphne", "front", "worker")}

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds so far of Daphne, the front, and the conmons of this Berth (exec sessions')."""
        used = {name: tree_cpu_seconds(pid) for name, pid in self.daemon_pids().items() if name != "worker"}
        used["conmon"] = 0.0
        for name in os.listdir("/proc"):
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if argv[0].endswith(b"conmon") and self.runtime_root.encode() in b" ".join(argv):
                used["conmon"] += tree_cpu_seconds(int(name))
        return used


def load_busybox(berth: Side, docker: Side, tempdir: str) -> None:
    """Give dockerd Berth's starter image: docker save from Berth, docker load into dockerd."""
    tar = os.path.join(tempdir, "busybox.tar")
    berth.docker("save", "-o", tar, IMAGE)
    docker.docker("load", "-i", tar)
    os.unlink(tar)


def start_container(side: Side) -> str:
    name = "bench-term-" + uuid.uuid4().hex[:6]
    side.docker("run", "-d", "--name", name, "--network", "none", IMAGE, "sleep", "100000")
    return side.docker("inspect", "--format", "{{.Id}}", name).stdout.strip()


#
# Report
#


def latency_row(name: str, times: list[float]) -> str:
    ms = [t * 1000 for t in times]
    return (f"| {name} | {len(ms)} | {percentile(ms, 50):.2f} | {percentile(ms, 90):.2f} | "
            f"{percentile(ms, 99):.2f} | {max(ms):.2f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1000, help="timed keystrokes per path (default 1000)")
    parser.add_argument("--mb", type=int, default=100, help="MB (10^6 bytes) to stream (default 100)")
    parser.add_argument("--runs", type=int, default=3, help="streams per path (default 3; the median is shown)")
    parser.add_argument("--only", choices=("latency", "stream"), help="one half of the benchmark only")
    parser.add_argument("--paths", default="",
                        help="comma-separated subset of: ws, berth-exec, docker-exec, host, berth-run, docker-run")
    parser.add_argument("--profile", metavar="DIR",
                        help="record the Berth processes (daphne, front) with py-spy during the websocket "
                             "measurements, raw stacks into DIR")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs) at the end")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root (dockerd and Berth's worker need it)")
    paths = set(filter(None, args.paths.split(","))) or {"ws", "berth-exec", "docker-exec", "host", "berth-run",
                                                           "docker-run"}
    total = args.mb * 1_000_000

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)

    tempdir = tempfile.mkdtemp(prefix="berth-bench-term-")
    logdir = os.path.join(tempdir, "logs")
    os.makedirs(logdir)
    berth = docker = None
    containers: list[tuple[Side, str]] = []
    latencies: dict[str, list[float]] = {}
    streams: dict[str, list[float]] = {}
    firsts: dict[str, list[float]] = {}
    notes = []
    try:
        need_docker = bool(paths & {"docker-exec", "docker-run"})
        if need_docker:
            log("starting dockerd...")
            docker = DockerSide(os.path.join(tempdir, "docker"), logdir, "127.0.0.1:1", IMAGE)
        log("starting Berth (redis, worker, daphne, front)...")
        berth = Berth(os.path.join(tempdir, "berth"), logdir)
        if docker is not None:
            load_busybox(berth, docker, tempdir)
        berth_ctr = start_container(berth)
        containers.append((berth, berth_ctr))
        if docker is not None:
            docker_ctr = start_container(docker)
            containers.append((docker, docker_ctr))

        def open_session(path: str):
            if path == "ws":
                session = berth.websocket(berth_ctr)
                notes.append(f"websocket extensions: {session.compression}")
            elif path == "berth-exec":
                session = PtySession(["docker", "exec", "-it", berth_ctr, "sh"], berth.env)
            elif path == "docker-exec":
                session = PtySession(["docker", "exec", "-it", docker_ctr, "sh"], docker.env)
            else:  # host
                env = {"PATH": "/usr/bin:/bin", "TERM": "xterm", "HOME": "/", "ENV": ""}
                session = PtySession(["busybox", "sh"], env)
            ready_shell(session)
            return session

        session_paths = [p for p in ("ws", "berth-exec", "docker-exec", "host") if p in paths]
        spies = []
        if args.profile:
            os.makedirs(args.profile, exist_ok=True)
            spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            for name, pid in berth.daemon_pids().items():
                if name == "worker":
                    continue
                out = os.path.join(os.path.abspath(args.profile), f"{name}.txt")
                spies.append(subprocess.Popen([spy_bin, "record", "--pid", str(pid), "--idle", "--rate", "500",
                                               "--nonblocking", "--format", "raw", "--output", out],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(2)
            session_paths = ["ws"]
        if args.only != "stream":
            for path in session_paths:
                session = open_session(path)
                try:
                    keystrokes(session, 50)  # warm-up, not counted
                    cpu = {n: tree_cpu_seconds(p) for n, p in berth.daemon_pids().items()}
                    latencies[path] = keystrokes(session, args.keys)
                    cpu = {n: tree_cpu_seconds(p) - cpu[n] for n, p in berth.daemon_pids().items()}
                    used = ("; Berth CPU " + ", ".join(f"{n} {s:.2f}s" for n, s in cpu.items())
                            if path in ("ws", "berth-exec") else "")
                    log(f"latency {path:12}: p50 {percentile(latencies[path], 50) * 1000:.2f} ms, "
                        f"p99 {percentile(latencies[path], 99) * 1000:.2f} ms{used}")
                finally:
                    session.close()
        if args.only != "latency":
            for run in range(args.runs):
                for path in session_paths:
                    session = open_session(path)
                    try:
                        before, client = berth.cpu_seconds(), time.process_time()
                        daphne = berth.daemon_pids()["daphne"]
                        idle = tree_rss_kb(daphne)
                        with RssSampler(daphne) as sampler:
                            elapsed = stream(session, total)
                        client = time.process_time() - client
                        used = {n: s - before.get(n, 0) for n, s in berth.cpu_seconds().items()}
                    finally:
                        session.close()
                    streams.setdefault(path, []).append(elapsed)
                    shown = ""
                    if path in ("ws", "berth-exec"):
                        shown = (", ".join(f"{n} {s:.2f}" for n, s in used.items())
                                 + f"; Daphne RSS {idle / 1024:.0f} -> peak {sampler.peak_kb / 1024:.0f} MB")
                    log(f"stream {run + 1}/{args.runs} {path:12}: {elapsed:.2f}s ({total / elapsed / 1e6:.0f} MB/s); "
                        f"CPU s: this client {client:.2f} {shown}")
                for path, side in (("berth-run", berth), ("docker-run", docker)):
                    if path in paths and not args.profile:
                        elapsed, from_first = run_t(side, total)
                        streams.setdefault(path, []).append(elapsed)
                        firsts.setdefault(path, []).append(from_first)
                        log(f"stream {run + 1}/{args.runs} {path:12}: {elapsed:.2f}s, {from_first:.2f}s from "
                            f"the first byte")
        stop_profilers(spies)
        print(report(latencies, streams, firsts, args, docker, notes))
        return 0
    finally:
        for side, ctr in containers:
            with _suppress():
                side.docker("rm", "-f", ctr, check=False, timeout=60)
        for side in (berth, docker):
            if side is not None:
                side.stop()
        if args.keep:
            log(f"kept the logs in {logdir}")
        else:
            _unmount_under(tempdir)
            shutil.rmtree(tempdir, ignore_errors=True)


LABELS = {
    "ws": "Berth, browser terminal (websocket)",
    "berth-exec": "Berth, `docker exec -it` (front listener)",
    "docker-exec": "dockerd, `docker exec -it`",
    "host": "host PTY, `busybox sh` (reference)",
    "berth-run": "Berth, `docker run -t --rm`",
    "docker-run": "dockerd, `docker run -t --rm`",
}


def report(latencies, streams, firsts, args, docker, notes) -> str:
    version = docker.version if docker is not None else "-"
    lines = [f"dockerd {version}; {os.cpu_count()} CPUs; " + "; ".join(dict.fromkeys(notes)), ""]
    if latencies:
        lines += ["Keystroke to echo (ms):", "",
                  "| path | keys | p50 | p90 | p99 | max |", "|---|---|---|---|---|---|"]
        lines += [latency_row(LABELS[p], t) for p, t in latencies.items()]
        if "ws" in latencies:
            ms = [t * 1000 for t in latencies["ws"]]
            ok = percentile(ms, 50) <= 2 and percentile(ms, 99) <= 10
            lines += ["", f"websocket target p50 <= 2 ms, p99 <= 10 ms: {'meets' if ok else 'misses'}"]
        lines.append("")
    if streams:
        lines += [f"{args.mb} MB through a TTY (s; median of {args.runs}):", "",
                  "| path | median s | MB/s | runs (s) | from first byte s |", "|---|---|---|---|---|"]
        for p, t in streams.items():
            med = statistics.median(t)
            first = f"{statistics.median(firsts[p]):.2f}" if p in firsts else "-"
            lines.append(f"| {LABELS[p]} | {med:.2f} | {args.mb / med:.0f} | {' '.join(f'{x:.2f}' for x in t)} | "
                         f"{first} |")
        if "ws" in streams and "docker-exec" in streams:
            ratio = statistics.median(streams["ws"]) / statistics.median(streams["docker-exec"])
            lines += ["", f"websocket / dockerd exec -it: {ratio:.2f} (target <= 1.00: "
                          f"{'meets' if ratio <= 1 else 'misses'})"]
        if "berth-run" in streams and "docker-run" in streams:
            ratio = statistics.median(streams["berth-run"]) / statistics.median(streams["docker-run"])
            lines.append(f"Berth / dockerd run -t: {ratio:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
