"""The Docker API's hijacked streams (attach, exec, run -i/-it) through the front listener, with the
real docker CLI against a live Berth: stdin, stdout/stderr frames, TTYs driven through a
pseudo-terminal, exit codes, detach, and the authorisation preflight."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import socket
import struct
import subprocess
import termios
import time
import uuid

import pytest

pytestmark = pytest.mark.live


@pytest.fixture
def docker_env(berth, tmp_path):
    return berth.docker_env(tmp_path / "docker")


@pytest.fixture
def docker(berth, docker_env):
    def run(*args, input=None, timeout=60, check=False, env=None):
        return subprocess.run(["docker", *args], env=env or docker_env, input=input, capture_output=True, text=True,
                              timeout=timeout)

    return run


@pytest.fixture
def name(docker):
    names = []

    def make():
        names.append("h-" + uuid.uuid4().hex[:8])
        return names[-1]

    yield make
    for n in names:
        docker("rm", "-f", n)


class Terminal:
    """A command on a pseudo-terminal of 30x100 (its controlling terminal, as in a shell)."""

    def __init__(self, args: list[str], env: dict):
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        self.proc = subprocess.Popen(args, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.output = b""

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def _read(self, timeout: float) -> bool:
        if select.select([self.master], [], [], timeout)[0]:
            try:
                data = os.read(self.master, 4096)
            except OSError:  # EIO: the command ended and closed its side
                return False
            self.output += data
            return bool(data)
        return True

    def expect(self, pattern: bytes, timeout: float = 15) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if m := re.search(pattern, self.output):
                return m
            if not self._read(0.1):
                break
        raise AssertionError(f"{pattern!r} not in {self.output[-500:]!r}")

    def expect_size(self, rows: int, cols: int, timeout: float = 25) -> None:
        """The CLI resizes just after start, beside the stream: ask until the size has landed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.send(b"stty size\r")
            try:
                self.expect(rb"\r\n(\d+ \d+)\r\n(?![\s\S]*stty size)", timeout=3)
            except AssertionError:
                continue
            sizes = re.findall(rb"\r\n(\d+ \d+)\r\n", self.output)
            if sizes and sizes[-1] == f"{rows} {cols}".encode():
                return
            time.sleep(0.2)
        raise AssertionError(f"the size never became {rows} {cols}: {self.output[-300:]!r}")

    def wait(self, timeout: float = 20) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            while self._read(0.05):
                pass
            os.close(self.master)
        return code


def test_run_i_stdin_to_cat(docker):
    result = docker("run", "-i", "--rm", "busybox", "cat", input="hi\n")
    assert (result.returncode, result.stdout) == (0, "hi\n"), result.stderr


def test_run_stdout_stderr_exit_code(docker):
    result = docker("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_run_output_is_never_lost(docker):
    """Trap 2 of notes/hijack.md: every run gets its output (the relay is never collected)."""
    for i in range(15):
        result = docker("run", "--rm", "busybox", "echo", f"run {i}")
        assert (result.returncode, result.stdout) == (0, f"run {i}\n"), result.stderr


def test_run_of_a_missing_command_is_127_and_rm_removes_it(docker, name):
    """The runc create fails while the CLI is already attached (it got its 101): the start says
    why, the CLI exits 127 as with Docker, and --rm removes the container (the CLI waits for it)."""
    gone = name()
    result = docker("run", "--rm", "--name", gone, "busybox", "no-such-command", check=False, timeout=60)
    assert result.returncode == 127 and "no-such-command" in result.stderr, result.stderr
    assert docker("ps", "-aq", "--filter", f"name=^{gone}$").stdout.strip() == ""
    kept = name()
    result = docker("run", "--name", kept, "busybox", "no-such-command", check=False, timeout=60)
    assert result.returncode == 127, result.stderr
    assert docker("inspect", "-f", "{{.State.Status}}", kept).stdout.strip() == "created"


def _conmons_of(container_id: str) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"conmon" and container_id.encode() in argv:
            pids.append(int(pid))
    return pids


def _eventually(check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_create_rm_is_made_ahead_and_leaves_nothing(docker, name):
    """A --rm container is created in runc as soon as it is created (docker run starts it next):
    its start then only runs runc start. It still behaves as one never started: its output is
    all there on start -a, and removing it unstarted leaves no conmon behind."""
    ctr = name()
    cid = docker("create", "--rm", "--name", ctr, "busybox", "sh", "-c", "echo made ahead; exit 4").stdout.strip()
    assert cid and _eventually(lambda: _conmons_of(cid)), "no conmon for the created --rm container"
    assert docker("inspect", "-f", "{{.State.Status}}", ctr).stdout.strip() == "created"
    result = docker("start", "-a", ctr)
    assert (result.returncode, result.stdout) == (4, "made ahead\n"), result.stderr
    assert _eventually(lambda: docker("ps", "-aq", "--filter", f"id={cid}").stdout.strip() == "")
    unstarted = name()
    cid = docker("create", "--rm", "--name", unstarted, "busybox", "true").stdout.strip()
    assert _eventually(lambda: _conmons_of(cid))
    assert docker("rm", unstarted).returncode == 0
    assert _eventually(lambda: not _conmons_of(cid)), "conmon left behind by rm of an unstarted --rm container"
    assert docker("ps", "-aq", "--filter", f"id={cid}").stdout.strip() == ""


def test_run_large_output(docker):
    result = docker("run", "--rm", "busybox", "sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' a; echo; echo e >&2")
    assert result.returncode == 0 and len(result.stdout) == 3000001 and result.stderr == "e\n"


def test_exec_output_and_exit_code(docker, name):
    ctr = name()
    assert docker("run", "-d", "--name", ctr, "busybox", "sleep", "300").returncode == 0
    result = docker("exec", ctr, "sh", "-c", "echo x; exit 4")
    assert (result.returncode, result.stdout) == (4, "x\n"), result.stderr
    result = docker("exec", "-i", ctr, "wc", "-l", input="a\nb\n")
    assert (result.returncode, result.stdout.strip()) == (0, "2"), result.stderr
    result = docker("exec", ctr, "no-such-command")
    assert result.returncode == 127 and "no-such-command" in result.stdout + result.stderr
    assert docker("exec", "-d", ctr, "touch", "/tmp/detached").returncode == 0  # no Upgrade: Django answers
    for _ in range(50):
        if docker("exec", ctr, "test", "-e", "/tmp/detached").returncode == 0:
            break
        time.sleep(0.1)
    else:
        pytest.fail("exec -d did not run")


def test_run_it_through_a_terminal(docker_env):
    term = Terminal(["docker", "run", "-it", "--rm", "busybox", "sh"], docker_env)
    term.expect(rb"# ")
    term.send(b"echo $((6*7))\r")
    term.expect(rb"\r\n42\r\n")
    term.expect_size(30, 100)  # the CLI's resize reached the container's PTY
    term.send(b"exit 5\r")
    assert term.wait() == 5


def test_exec_it_through_a_terminal(docker, docker_env, name):
    ctr = name()
    assert docker("run", "-d", "--name", ctr, "busybox", "sleep", "300").returncode == 0
    term = Terminal(["docker", "exec", "-it", ctr, "sh"], docker_env)
    term.expect(rb"# ")
    term.send(b"echo $((6*7))\r")
    term.expect(rb"\r\n42\r\n")
    term.expect_size(30, 100)
    term.send(b"exit 5\r")
    assert term.wait() == 5
    assert docker("inspect", "-f", "{{.State.Running}}", ctr).stdout.strip() == "true"


def test_start_ai(docker, name):
    ctr = name()
    assert docker("create", "-i", "--name", ctr, "busybox", "sh", "-c", "read line; echo got $line; exit 6").returncode == 0
    result = docker("start", "-ai", ctr, input="it\n")
    assert (result.returncode, result.stdout) == (6, "got it\n"), result.stderr
    result = docker("start", "-ai", ctr, input="again\n")  # an exited container attaches again
    assert (result.returncode, result.stdout) == (6, "got again\n"), result.stderr


def test_start_ai_tty(docker_env, docker, name):
    ctr = name()
    assert docker("create", "-it", "--name", ctr, "busybox", "sh").returncode == 0
    term = Terminal(["docker", "start", "-ai", ctr], docker_env)
    term.expect(rb"# ")
    term.send(b"exit 7\r")
    assert term.wait() == 7


def test_attach_and_detach_leaves_it_running(berth, tmp_path, docker, name):
    """Detach keys are the CLI's; it then half-closes and the front ends the session. Over a unix
    socket (over TCP, CLI 28.2.2 itself hangs after a detach: notes/hijack.md pitfall 6)."""
    ctr = name()
    assert docker("run", "-dit", "--name", ctr, "busybox", "sh").returncode == 0
    env = berth.docker_env(tmp_path / "docker-unix", unix=True)
    term = Terminal(["docker", "attach", ctr], env)
    time.sleep(0.5)
    term.send(b"echo $((6*7))\r")
    term.expect(rb"\r\n42\r\n")
    term.send(b"\x10\x11")  # ctrl-p ctrl-q
    term.wait()
    assert b"read escape sequence" in term.output
    assert docker("inspect", "-f", "{{.State.Running}}", ctr).stdout.strip() == "true"
    # And it can be attached again.
    term = Terminal(["docker", "attach", ctr], env)
    time.sleep(0.5)
    term.send(b"exit 8\r")
    assert term.wait() == 8


def test_logs_follow_through_the_front(docker, name):
    ctr = name()
    assert docker("run", "-d", "--name", ctr, "busybox", "sh", "-c",
                  "for i in 1 2 3; do echo line $i; sleep 0.3; done").returncode == 0
    result = docker("logs", "-f", ctr, timeout=30)
    assert result.returncode == 0 and result.stdout == "line 1\nline 2\nline 3\n"


def test_wait_headers_come_at_once(berth, docker, name):
    """Trap 3: /wait sends its headers before the exit (docker run waits for them before start)."""
    ctr = name()
    assert docker("create", "--name", ctr, "busybox", "true").returncode == 0
    with socket.create_connection(("127.0.0.1", berth.port), timeout=5) as s:
        s.sendall(f"POST /v1.41/containers/{ctr}/wait?condition=next-exit HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  f"Authorization: Bearer {berth.token}\r\nContent-Length: 0\r\n\r\n".encode())
        start = time.monotonic()
        head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 200") and time.monotonic() - start < 2
        assert docker("start", ctr).returncode == 0
        body = b""
        while b"StatusCode" not in body:
            body += s.recv(4096)
        assert b'"StatusCode": 0' in body or b'"StatusCode":0' in body


def _hijack(berth, path: str, body: bytes, token: str | None) -> bytes:
    with socket.create_connection(("127.0.0.1", berth.port), timeout=10) as s:
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: Upgrade\r\nUpgrade: tcp\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


def test_no_exec_permission_is_refused_before_101(berth, docker, name, tmp_path):
    from tests.live import manage

    ctr = name()
    assert docker("run", "-d", "--name", ctr, "busybox", "sleep", "300").returncode == 0
    status, answer = berth.json("POST", f"/v1.41/containers/{ctr}/exec", {"Cmd": ["true"], "AttachStdout": True})
    assert status == 201
    viewer = "viewer-" + uuid.uuid4().hex[:6]
    manage("shell", "-c", f"from django.contrib.auth.models import User, Group; "
                          f"u = User.objects.create_user({viewer!r}); u.groups.add(Group.objects.get(name='viewer'))",
           env=berth.env)
    token = manage("createtoken", viewer, env=berth.env).strip().splitlines()[-1]
    for path, body in ((f"/v1.41/exec/{answer['Id']}/start", b'{"Detach":false,"Tty":false}'),
                       (f"/v1.41/containers/{ctr}/attach?stream=1&stdout=1", b"")):
        head = _hijack(berth, path, body, token)
        assert head.startswith(b"HTTP/1.1 403"), head
        assert b"101" not in head.split(b"\r\n")[0]
        assert _hijack(berth, path, body, None).startswith(b"HTTP/1.1 401")
    # The CLI says so too.
    env = berth.docker_env(tmp_path / "viewer")
    (tmp_path / "viewer" / "config.json").write_text(json.dumps({"HttpHeaders": {"Authorization": f"Bearer {token}"}}))
    result = subprocess.run(["docker", "exec", ctr, "true"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "permission denied" in result.stderr


def test_internal_paths_are_not_reachable(berth):
    for path in ("/v1.41/_berth/hijack/preflight", "/_berth/hijack/preflight"):
        status, _, _ = berth.request("POST", path, body={"path": "/containers/x/attach"})
        assert status == 404
    # And Daphne itself refuses them without the front's secret.
    from tests.live import wait_for  # noqa: F401  (the socket path is the live server's)

    sock = os.path.join(os.path.dirname(berth.docker_socket), "daphne.sock")
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)
        s.sendall(f"POST /v1.41/_berth/hijack/preflight HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  f"Authorization: Bearer {berth.token}\r\nX-Berth-Front-Secret: guess\r\n"
                  f"Content-Length: 2\r\nConnection: close\r\n\r\n{{}}".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 404")


def test_ping_through_the_front(berth):
    """The front replays Daphne's 200 to a ping with the same credentials (Front.ping); a ping
    without them, or with bad ones, is refused every time."""
    for _ in range(2):
        status, headers, body = berth.request("GET", "/_ping")
        assert status == 200 and body == b"OK" and dict(headers).get("Api-Version") == "1.41"
        status, _, body = berth.request("HEAD", "/v1.41/_ping")
        assert status == 200 and body == b""
        assert berth.request("GET", "/_ping", headers={"Authorization": "Bearer nope"})[0] == 401
        assert berth.request("GET", "/_ping", token=False)[0] == 401
