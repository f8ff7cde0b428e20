"""Tests for runtime.attach and the interactive exec sessions / container attach of
runtime.containers: real conmon and runc, with the offline busybox image (as test_containers)."""

import asyncio
import hashlib
import json
import os
import random
import select
import socket
import string
import subprocess
import sys
import threading
import time

import pytest

from runtime.attach import (
    STDERR,
    STDOUT,
    AttachConnection,
    docker_frame,
    open_attach,
    resize_ctl,
)
from runtime.containers import ContainerConfig
from runtime.errors import InvalidArgument, InvalidState, NotFound

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="runs real containers: needs root")


# The base, engine, store and ctr fixtures are in conftest.py.
ENGINE_DIR_PREFIX = "ba-"


@pytest.fixture(scope="module")
def sleeper(engine):
    """One running container for the exec sessions of this module."""
    store = engine.containers
    record = store.create(ContainerConfig(image="busybox", cmd=["sleep", "100000"]))
    store.start(record.id)
    yield record.id
    store.remove(record.id, force=True)


def read_until(conn: AttachConnection, needle: bytes, timeout: float = 10.0) -> bytes:
    """Everything read until ``needle`` appears (AssertionError on EOF or timeout)."""
    data = bytearray()
    deadline = time.monotonic() + timeout
    while needle not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([conn], [], [], remaining)[0]:
            raise AssertionError(f"{needle!r} not seen in time; got {bytes(data[-300:])!r}")
        packet = conn.recv()
        if packet is None:
            raise AssertionError(f"EOF before {needle!r}; got {bytes(data[-300:])!r}")
        assert packet[0] == STDOUT
        data += packet[1]
    return bytes(data)


def read_to_eof(conn: AttachConnection, timeout: float = 10.0) -> list[tuple[int, bytes]]:
    packets = []
    conn.sock.settimeout(timeout)
    while (packet := conn.recv()) is not None:
        packets.append(packet)
    return packets


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


#
# The protocol, without conmon
#


def test_docker_frames_and_long_socket_paths(tmp_path):
    assert docker_frame(STDOUT, b"hi") == b"\x01\x00\x00\x00\x00\x00\x00\x02hi"
    assert docker_frame(STDERR, b"") == b"\x02\x00\x00\x00\x00\x00\x00\x00"
    # A socket path over 107 bytes is reached through /proc/self/fd/<O_PATH fd>/ (notes §5).
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = str(deep / "attach")
    assert len(path) > 107
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fd = os.open(deep, os.O_PATH)
    server.bind(f"/proc/self/fd/{fd}/attach")
    os.close(fd)
    server.listen(1)
    with AttachConnection.open(path, timeout=5) as conn:
        peer, _ = server.accept()
        peer.send(b"\x02" + b"x" * 8192)
        peer.send(b"\x03oops")
        peer.send(b"\x02")  # An empty packet is skipped, not taken for EOF.
        peer.send(b"\x02end")
        assert conn.recv() == (STDOUT, b"x" * 8192)
        assert conn.recv() == (STDERR, b"oops")
        assert conn.recv() == (STDOUT, b"end")
        conn.send(b"y" * 20000)  # Cut into packets of 8 KiB.
        assert [len(peer.recv(65536)) for _ in range(3)] == [8192, 8192, 3616]
        conn.close_stdin()
        assert peer.recv(10) == b""
        peer.close()
        assert conn.recv() is None
    server.close()


def test_resize_is_debounced_one_line_per_write_and_the_last_size_wins(tmp_path):
    ctl = str(tmp_path / "ctl")
    os.mkfifo(ctl)
    reader = os.open(ctl, os.O_RDONLY | os.O_NONBLOCK)
    reads = []
    stop = threading.Event()

    def drain():  # conmon's side: one read per line when the lines are spaced.
        while not stop.is_set():
            if select.select([reader], [], [], 0.005)[0]:
                try:
                    data = os.read(reader, 4096)
                except BlockingIOError:  # Readable for a writer's hang-up, and another opened since.
                    continue
                if data:
                    reads.append((time.monotonic(), data))

    def stamp() -> float:  # When the last line was written (CLOCK_MONOTONIC: one clock for all processes).
        with open(ctl + ".lock") as f:
            return float(f.read())

    thread = threading.Thread(target=drain)
    thread.start()
    try:
        resize_ctl(ctl, 10, 20)  # After a quiet time: written at once.
        first = stamp()
        for i in range(20):  # A burst: only the last is written, 50 ms after the first.
            resize_ctl(ctl, 30 + i, 40 + i)
        time.sleep(0.3)
        assert b"".join(data for _, data in reads) == b"1 10 20\n1 49 59\n"
        assert stamp() - first >= 0.049
        # Another process's write is spaced from ours too (the flock'ed stamp in ctl.lock).
        reads.clear()
        code = f"from runtime.attach import resize_ctl; resize_ctl({ctl!r}, 7, 8)"
        subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
        first = stamp()
        resize_ctl(ctl, 9, 10)
        time.sleep(0.2)
        assert b"".join(data for _, data in reads) == b"1 7 8\n1 9 10\n"
        assert stamp() - first >= 0.049
    finally:
        stop.set()
        thread.join()
        os.close(reader)
    with pytest.raises(FileNotFoundError):
        resize_ctl(str(tmp_path / "nope"), 1, 1)


#
# Exec sessions
#


@needs_root
def test_exec_session_runs_once_attached_with_the_first_size_and_resizes(store, sleeper):
    session = store.exec_session(sleeper, ["sh"], rows=30, cols=100)
    exec_id = session["exec_id"]
    assert os.path.exists(session["socket"]) and len(session["socket"]) < 108
    info = store.exec_session_inspect(exec_id)
    assert (info["started"], info["running"], info["exit_code"], info["tty"]) == (False, False, None, True)
    with AttachConnection.open(session["socket"], timeout=10) as conn:
        started = store.exec_session_start(exec_id)
        assert started["running"] and started["pid"] > 0 and started["container_id"] == sleeper
        with pytest.raises(InvalidState):
            store.exec_session_start(exec_id)
        conn.send(b"echo $((6*7))\n")
        read_until(conn, b"\r\n42\r\n")
        conn.send(b"stty size\n")
        read_until(conn, b"\r\n30 100\r\n")
        store.exec_session_resize(exec_id, 40, 132)
        time.sleep(0.1)
        conn.send(b"stty size\n")
        read_until(conn, b"\r\n40 132\r\n")
        # A burst of resizes (a window being dragged): the last one is applied.
        for i in range(10):
            store.exec_session_resize(exec_id, 41 + i, 133 + i)
        time.sleep(0.2)
        conn.send(b"stty size\n")
        read_until(conn, b"\r\n50 142\r\n")
        conn.send(b"exit 3\n")
        read_to_eof(conn)
    assert store.exec_session_wait(exec_id, timeout=10) == 3
    info = store.exec_session_inspect(exec_id)
    assert (info["exit_code"], info["running"], info["started"]) == (3, False, True)
    with pytest.raises(InvalidState):
        store.exec_session_resize(exec_id, 10, 10)


@needs_root
def test_two_clients_see_the_output_and_a_new_client_rejoins(store, sleeper):
    session = store.exec_session(sleeper, ["sh"])
    a = AttachConnection.open(session["socket"], timeout=10)
    b = AttachConnection.open(session["socket"], timeout=10)
    store.exec_session_start(session["exec_id"])
    a.send(b"echo seen-$((1+1))\n")
    read_until(a, b"seen-2\r\n")
    read_until(b, b"seen-2\r\n")
    a.close()
    b.send(b"echo still-$((2+2))\n")
    read_until(b, b"still-4\r\n")
    b.close()
    time.sleep(0.1)
    assert store.exec_session_inspect(session["exec_id"])["running"]
    with AttachConnection.open(session["socket"], timeout=10) as c:
        c.send(b"echo back-$((3+3)); exit 5\n")
        read_until(c, b"back-6\r\n")
        read_to_eof(c)
    assert store.exec_session_wait(session["exec_id"], timeout=10) == 5


@needs_root
def test_a_session_made_by_one_process_is_started_by_another(base, store, sleeper):
    """The worker creates the session and goes away; a web process attaches; a third process
    starts it: nothing of the session lives in its creator's memory."""
    setup = ("import json, sys; from runtime.config import RuntimeConfig; from runtime.engine import Engine; "
             f"store = Engine(RuntimeConfig(root={os.path.join(base, 'root')!r}, "
             f"run_root={os.path.join(base, 'run')!r})).containers; ")
    create = setup + f"print(json.dumps(store.exec_session({sleeper!r}, ['sh', '-c', 'echo from-$((5*5)); exit 4'])))"
    session = json.loads(subprocess.run([sys.executable, "-c", create], cwd=REPO, check=True,
                                        capture_output=True).stdout)
    with AttachConnection.open(session["socket"], timeout=10) as conn:
        start = setup + f"print(store.exec_session_start({session['exec_id']!r})['pid'])"
        pid = int(subprocess.run([sys.executable, "-c", start], cwd=REPO, check=True,
                                 capture_output=True).stdout)
        assert pid > 0
        data = b"".join(p[1] for p in read_to_eof(conn))
    assert data == b"from-25\r\n"
    assert store.exec_session_wait(session["exec_id"], timeout=10) == 4
    assert store.exec_session_inspect(session["exec_id"])["pid"] == pid


@needs_root
def test_a_1mb_paste_arrives_intact(store, sleeper):
    rng = random.Random(6)
    alphabet = string.ascii_letters + string.digits
    payload = b"".join(("".join(rng.choices(alphabet, k=63)) + "\n").encode() for _ in range(16384))
    assert len(payload) == 1 << 20
    session = store.exec_session(sleeper, ["sh"])
    with AttachConnection.open(session["socket"], timeout=20) as conn:
        store.exec_session_start(session["exec_id"])
        conn.send(b"stty -echo; echo READY; cat > /tmp/x; wc -c < /tmp/x; md5sum /tmp/x\n")
        read_until(conn, b"READY\r\n")
        out = bytearray()
        reader = threading.Thread(target=lambda: out.extend(read_until(conn, b" /tmp/x\r\n", timeout=60)))
        reader.start()  # Read while writing: conmon blocks on a client that does not read.
        conn.send(payload + b"\x04")
        reader.join(70)
        assert b"1048576\r\n" in out
        assert hashlib.md5(payload).hexdigest().encode() + b"  /tmp/x\r\n" in out
        conn.send(b"exit\n")
        read_to_eof(conn)
    assert store.exec_session_wait(session["exec_id"], timeout=10) == 0


@needs_root
def test_a_100mb_flood_through_the_async_client_keeps_memory_flat(store, sleeper):
    size = 100_000_000
    session = store.exec_session(sleeper, ["sh", "-c", f"head -c {size} /dev/zero | tr '\\0' a"])

    async def main():
        conn = await open_attach(session["socket"])
        async with conn:
            await asyncio.get_running_loop().run_in_executor(None, store.exec_session_start, session["exec_id"])
            total, before, peak = 0, rss_kb(), 0
            while (packet := await conn.recv()) is not None:
                stream, data = packet
                assert stream == STDOUT and len(data) <= 8192
                total += len(data)
                if total % 64 == 0:
                    peak = max(peak, rss_kb())
            return total, before, max(peak, rss_kb())

    start = time.monotonic()
    total, before, peak = asyncio.run(asyncio.wait_for(main(), 120))
    assert total == size
    assert peak - before < 20_000, (before, peak)
    assert store.exec_session_wait(session["exec_id"], timeout=10) == 0
    print(f"100 MB through the attach socket (TTY) in {time.monotonic() - start:.2f}s")


@needs_root
def test_an_async_client_types_and_half_closes_a_non_tty_exec(store, sleeper):
    session = store.exec_session(sleeper, ["sh", "-c", "cat; echo done >&2"], tty=False, stdin=True)

    async def main():
        conn = await open_attach(session["socket"])
        store.exec_session_start(session["exec_id"])
        await conn.send(b"line one\n")
        await conn.send(b"x" * 20000)
        conn.close_stdin()  # Docker's exec -i: EOF to the process, output keeps coming.
        packets = []
        while (packet := await conn.recv()) is not None:
            packets.append(packet)
        conn.close()
        return packets

    packets = asyncio.run(asyncio.wait_for(main(), 20))
    out = b"".join(d for s, d in packets if s == STDOUT)
    assert out == b"line one\n" + b"x" * 20000
    assert b"".join(d for s, d in packets if s == STDERR) == b"done\n"
    assert store.exec_session_wait(session["exec_id"], timeout=10) == 0


@needs_root
def test_a_missing_command_fails_at_start_with_127(store, sleeper):
    session = store.exec_session(sleeper, ["no-such-command"])
    with AttachConnection.open(session["socket"], timeout=10):
        with pytest.raises(InvalidArgument, match="OCI runtime exec failed"):
            store.exec_session_start(session["exec_id"])
    info = store.exec_session_inspect(session["exec_id"])
    assert info["exit_code"] == 127 and not info["running"] and "no-such-command" in info["error"]
    assert store.exec_session_wait(session["exec_id"], timeout=10) == 127


@needs_root
def test_an_unstarted_session_is_cleaned_up_with_its_container(store, ctr):
    record = ctr("sleep", "1000")
    session = store.exec_session(record.id, ["sh"])
    pid = store.exec_session_inspect(session["exec_id"])["conmon_pid"]
    assert pid > 0 and os.path.exists(f"/proc/{pid}")
    store.remove(record.id, force=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.02)
    assert not _alive(pid)
    with pytest.raises(NotFound):
        store.exec_session_inspect(session["exec_id"])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


#
# Container attach
#


@needs_root
def test_attach_to_a_tty_container_between_init_and_start(store, ctr):
    record = ctr("sh", start=False, tty=True, open_stdin=True)
    store.init(record.id)
    with AttachConnection.open(store.attach_socket_path(record.id), timeout=10) as conn:
        store.start(record.id)
        conn.send(b"echo $((6*7))\n")
        read_until(conn, b"\r\n42\r\n")
        conn.send(b"stty size\n")
        read_until(conn, b"\r\n24 80\r\n")
        store.resize(record.id, 40, 132)
        time.sleep(0.1)
        conn.send(b"stty size\n")
        read_until(conn, b"\r\n40 132\r\n")
        conn.send(b"exit 2\n")
        read_to_eof(conn)
    assert store.wait(record.id, timeout=10) == 2
    with pytest.raises(InvalidState):
        store.resize(record.id, 10, 10)


@needs_root
def test_stdin_eof_ends_cat_in_a_non_tty_container_and_output_is_framed(store, ctr):
    record = ctr("sh", "-c", "cat; echo bye >&2", start=False, open_stdin=True, stdin_once=True)
    store.init(record.id)
    with AttachConnection.open(store.attach_socket_path(record.id), timeout=10) as conn:
        conn.send(b"hello\n")  # Before start: held in the pipe, read once cat runs.
        store.start(record.id)
        conn.send(b"world\n")
        conn.close_stdin()
        packets = read_to_eof(conn)
    assert b"".join(d for s, d in packets if s == STDOUT) == b"hello\nworld\n"
    assert b"".join(d for s, d in packets if s == STDERR) == b"bye\n"
    assert b"".join(docker_frame(s, d) for s, d in packets if s == STDERR) == b"\x02\x00\x00\x00\x00\x00\x00\x04bye\n"
    assert store.wait(record.id, timeout=10) == 0
