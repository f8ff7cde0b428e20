"""The live stack for tests: a private Redis, a Celery worker, Daphne on a unix socket and the front
listener on a TCP port in front of it, started as a user would (scripts/run.sh)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
ADMIN_USER = "admin"
ADMIN_PASSWORD = "test-admin-password-5821"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str, proc: subprocess.Popen | None = None):
    """Call ``check`` until it returns a true value; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        try:
            value = check()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


def manage(*args: str, env: dict | None = None) -> str:
    """Run ``manage.py`` with the test environment; return its stdout."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT, env=env or os.environ.copy(), capture_output=True, text=True, timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed: {result.stderr}")
    return result.stdout


@dataclass
class Process:
    """A child process with its log file."""

    name: str
    popen: subprocess.Popen
    log: Path

    def stop(self, timeout: float = 15) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def start(name: str, argv: list[str], logdir: Path, env: dict | None = None) -> Process:
    log = logdir / f"{name}.log"
    f = open(log, "ab")
    if log.stat().st_size:
        f.write(b"\n--- restarted ---\n")
        f.flush()
    popen = subprocess.Popen(argv, cwd=ROOT, env=env or os.environ.copy(), stdout=f, stderr=subprocess.STDOUT,
                             start_new_session=True)
    return Process(name, popen, log)


def start_redis(logdir: Path) -> Process:
    url = urlparse(os.environ["REDIS_URL"])
    proc = start("redis", [shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1", "--port",
                           str(url.port), "--save", "", "--appendonly", "no", "--dir", str(logdir)], logdir)

    def ping():
        with socket.create_connection(("127.0.0.1", url.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    wait_for(ping, 15, "redis-server", proc.popen)
    return proc


@dataclass
class LiveServer:
    """A running Berth: its URL, an admin account and an API token."""

    url: str
    port: int
    token: str
    processes: list[Process] = field(default_factory=list)
    env: dict = field(default_factory=dict)
    username: str = ADMIN_USER
    password: str = ADMIN_PASSWORD
    docker_socket: str = ""  # the front's unix socket (DOCKER_HOST=unix://...)

    def request(self, method: str, path: str, body=None, headers: dict | None = None, token: bool = True):
        """Make one HTTP request; return (status, headers, body bytes)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        hdrs = dict(headers or {})
        if token:
            hdrs.setdefault("Authorization", f"Bearer {self.token}")
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=hdrs)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, dict(response.getheaders()), data

    def json(self, method: str, path: str, body=None, **kwargs):
        status, _, data = self.request(method, path, body, **kwargs)
        return status, (json.loads(data) if data else None)

    def docker_env(self, config_dir: Path, unix: bool = False) -> dict:
        """Environment for the real docker CLI: our host (TCP, or the front's unix socket with
        ``unix``), and our token in config.json's HttpHeaders."""
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / "config.json").write_text(json.dumps({"HttpHeaders": {"Authorization": f"Bearer {self.token}"}}))
        env = os.environ.copy()
        host = f"unix://{self.docker_socket}" if unix else f"tcp://127.0.0.1:{self.port}"
        env.update({"DOCKER_HOST": host, "DOCKER_CONFIG": str(config_dir)})
        env.pop("DOCKER_TLS_VERIFY", None)
        env.pop("DOCKER_CERT_PATH", None)
        return env

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in self.processes)

    def restart_worker(self, kill: bool = True) -> None:
        """Kill the worker (SIGKILL: a crash) or stop it, then start a new one, as `make run` would."""
        old = next(p for p in self.processes if p.name == "worker")
        if kill:
            os.killpg(old.popen.pid, signal.SIGKILL)
            old.popen.wait()
        else:
            old.stop()
        self.processes.remove(old)
        new = start("worker", old.popen.args, old.log.parent, self.env)
        self.processes.insert(0, new)
        wait_for(lambda: "ready." in new.log.read_text(errors="replace").split("--- restarted ---")[-1], 60,
                 "the new worker", new.popen)


def start_live_server(logdir: Path) -> LiveServer:
    """Migrate, create the admin and a token, then start a Celery worker, Daphne and the front.

    The worker listens on the node queue, Daphne on a unix socket in ``logdir`` and the front on a
    free port, exactly as `make run` starts them.
    """
    env = os.environ.copy()
    env.update({"DJANGO_SETTINGS_MODULE": "project.settings", "BERTH_ADMIN_USER": ADMIN_USER,
                "BERTH_ADMIN_PASSWORD": ADMIN_PASSWORD})
    manage("migrate", "--no-input", "-v0", env=env)
    manage("ensureadmin", env=env)
    manage("ensurestarterimage", env=env)  # busybox:latest, offline, as `make run` does
    token = manage("createtoken", ADMIN_USER, env=env).strip().splitlines()[-1]
    node = env["BERTH_NODE"]
    worker = start("worker", [str(VENV_BIN / "celery"), "-A", "project", "worker", "-Q", f"node.{node}",
                              "-n", f"berth@{node}", "--concurrency", "2", "--loglevel", "INFO"], logdir, env)
    port = free_port()
    sock = logdir / "daphne.sock"
    if sock.exists():
        sock.unlink()
    daphne = start("daphne", [str(VENV_BIN / "daphne"), "-u", str(sock), "--proxy-headers",
                              "project.asgi:application"], logdir, env)
    wait_for(sock.exists, 30, "daphne's socket", daphne.popen)
    data_dir = Path(env.get("BERTH_DATA_DIR") or ROOT / "var")
    docker_socket = logdir / "docker.sock"
    front = start("front", [sys.executable, str(ROOT / "project" / "front.py"), "--listen", f"127.0.0.1:{port}",
                            "--listen", f"unix:{docker_socket}", "--upstream", str(sock),
                            "--secret-file", str(data_dir / "front_secret")], logdir, env)
    server = LiveServer(url=f"http://127.0.0.1:{port}", port=port, token=token, processes=[worker, daphne, front],
                        env=env, docker_socket=str(docker_socket))
    wait_for(lambda: server.request("GET", "/_ping", token=False)[0] == 401, 30, "daphne", daphne.popen)
    # The worker answers pings once it is ready (its reconcile pass done): tests may rely on it.
    wait_for(lambda: "ready." in worker.log.read_text(errors="replace"), 60, "the worker", worker.popen)
    return server
