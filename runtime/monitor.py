"""conmon, the per-container monitor: launching it, and reading what it leaves behind.

conmon (Debian's 2.1.6) runs ``runc create`` for us, then stays as the parent of the container's
process: it holds its pipes or PTY, writes the k8s-file log, serves the attach socket and, when
the process ends, writes the exit code to a file. It outlives the worker that started it. The facts
this module relies on were measured on the project machine (notes/conmon.md); the section numbers
below refer to that note.

Launching (§2), as Podman does:

1. Two ``socketpair(AF_UNIX, SOCK_SEQPACKET)``: the sync pipe (conmon reports ``{"data": pid}`` or
   ``{"data": -1, "message": "<runc's stderr>"}``) and the start pipe (conmon waits for one byte
   before it forks: the window to move it into another cgroup).
2. conmon runs with cwd = the bundle (its ``oom`` file lands there) and TMPDIR = a private short
   directory under the socket dir's parent, removed once conmon reported: with ``-t`` conmon makes
   its console socket ``$TMPDIR/conmon-term.XXXXXX`` there and leaves it if ``runc create`` fails
   (§10); the bundle itself is too deep for a socket path (sun_path holds 107 bytes). Absolute
   paths, ``--api-version 1``, a short ``--socket-dir-path``, the container's
   own ``--persist-dir`` (created first: without it the exit code is lost, §4).
3. Its first process forks the daemon and exits at once; the daemon reports on the sync pipe once
   ``runc create`` is done. EOF without a message means conmon died: an error.

Files conmon leaves (§4, §5): ``<exit_dir>/<cid>`` and ``<persist_dir>/exit`` with the decimal exit
code (no newline); ``<persist_dir>/oom`` after an OOM kill; ``<bundle>/conmon.pid``; the attach
socket ``<socket_dir>/<cuuid>/attach``, where ``<socket_dir>/<cuuid>`` is a symlink to the bundle
that conmon never removes (the caller must: ``remove_socket_link``).

Nothing here knows about container states: runtime.containers decides.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import queue
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Iterable

from runtime.errors import CommandError
from runtime.oci import OciRuntime, runc_message

__all__ = ["IN_CLOSE_WRITE", "IN_CREATE", "IN_MODIFY", "IN_MOVED_TO", "Conmon", "ExecAttachLaunch", "ExecLaunch",
           "FileWatch",
           "LogReader", "LogRecord", "conmon_alive", "format_time_ns", "parse_time_ns", "process_start_time",
           "read_exit_file", "read_sync_file", "wait_for_exit"]

# A sync-pipe message is one short JSON line; runc's error text can be a few KiB.
_MAX_MESSAGE = 1 << 16
_DEFAULT_TIMEOUT = 60.0


@dataclass
class ExecLaunch:
    """A detached exec session conmon started: the process's host pid and where it reports."""

    pid: int
    exit_file: str
    log_path: str


@dataclass
class ExecAttachLaunch:
    """An exec session conmon prepared with ``--exec-attach``: its attach socket and FIFOs exist,
    the process is not started yet (write one byte to ``start_fifo``, from any process)."""

    conmon_pid: int
    socket: str
    ctl: str
    start_fifo: str
    sync_file: str
    exit_file: str
    tmpdir: str


def read_sync_file(path: str) -> list[dict]:
    """The JSON messages conmon wrote so far to a sync *file* (one per line, ``{"data": N}`` or
    ``{"data": -1, "message": "..."}``); a line still being written is left out."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_MESSAGE)
    except FileNotFoundError:
        return []
    out = []
    for line in data.split(b"\n")[:-1]:
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


class Conmon:
    """The conmon binary at ``path``, driving the OCI runtime each call names (runc or crun, its
    state under ``oci.root``).

    ``socket_dir`` is conmon's ``--socket-dir-path``: keep it short, the attach socket path
    ``<socket_dir>/<cuuid>/attach`` must fit in 107 bytes (§5).
    """

    def __init__(self, path: str, socket_dir: str):
        self.path = shutil.which(path) or path
        self.socket_dir = socket_dir

    def attach_path(self, cuuid: str) -> str:
        """Where clients connect (SOCK_SEQPACKET) to the container's or session's stdio."""
        return os.path.join(self.socket_dir, cuuid, "attach")

    def remove_socket_link(self, cuuid: str) -> None:
        """Remove the ``<socket_dir>/<cuuid>`` symlink conmon 2.1.6 leaves behind (§10)."""
        try:
            os.unlink(os.path.join(self.socket_dir, cuuid))
        except (FileNotFoundError, IsADirectoryError):
            pass

    def _common_args(self, cid: str, oci: OciRuntime, cuuid: str, bundle: str, pid_file: str, log_path: str,
                     exit_dir: str, persist_dir: str) -> list[str]:
        return [
            self.path, "--api-version", "1",
            "-c", cid, "-u", cuuid, "-n", cid,
            # conmon checks -r with access(X_OK): it must be a path, not a name to look up (§2).
            "-r", shutil.which(oci.path) or oci.path, "-b", bundle, "-p", pid_file,
            "-l", f"k8s-file:{log_path}",
            "--exit-dir", exit_dir, "--persist-dir", persist_dir,
            "--socket-dir-path", self.socket_dir,
            "--runtime-arg", "--root", "--runtime-arg", oci.root,
        ]

    def create(self, cid: str, oci: OciRuntime, *, cuuid: str, bundle: str, log_path: str, exit_dir: str,
               persist_dir: str,
               terminal: bool = False, stdin: bool = False, leave_stdin_open: bool = True,
               log_size_max: int | None = None, exit_command: Iterable[str] | None = None,
               timeout: float = _DEFAULT_TIMEOUT) -> int:
        """Start conmon for the container ``cid`` whose spec is ``<bundle>/config.json``.

        Returns the container's pid once ``runc create`` is done: the container waits in runc's
        ``created`` state for ``runc start``. ``terminal`` must match ``process.terminal`` (§1).
        With ``stdin`` (docker run -i), ``leave_stdin_open`` keeps it open when an attach client
        leaves (§5; Docker's StdinOnce is the opposite). Raises CommandError with runc's message.
        """
        for d in (exit_dir, persist_dir, self.socket_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)
        argv = self._common_args(cid, oci, cuuid, bundle, os.path.join(bundle, "pidfile"), log_path, exit_dir,
                                 persist_dir)
        argv += ["-P", os.path.join(bundle, "conmon.pid")]
        if terminal:
            argv.append("-t")
        if stdin:
            argv.append("-i")
            if leave_stdin_open:
                argv.append("--leave-stdin-open")
        if log_size_max:
            argv += ["--log-size-max", str(int(log_size_max))]
        if exit_command:
            command = list(exit_command)
            argv += ["--exit-command", command[0]]
            for arg in command[1:]:
                argv += ["--exit-command-arg", arg]
        messages = self._launch(argv, cwd=bundle, tmp_name=cuuid, expect=1, timeout=timeout,
                                what=f"container {cid}")
        return messages[0]

    def exec_detached(self, cid: str, oci: OciRuntime, *, session_id: str, session_dir: str,
                      process_file: str,
                      terminal: bool = False, timeout: float = _DEFAULT_TIMEOUT) -> ExecLaunch:
        """Run ``process_file`` (a spec ``process`` object) in the container, under its own conmon.

        The session's output goes to ``<session_dir>/log`` (k8s-file) and its exit code to
        ``<session_dir>/exits/<cid>``; conmon outlives us. Returns once the process runs.
        The interactive (attached) exec of the browser terminal comes with ``--exec-attach``
        (notes §7): it needs a third pipe and a second start byte, and is not done here yet.
        """
        exit_dir = os.path.join(session_dir, "exits")
        os.makedirs(exit_dir, mode=0o700, exist_ok=True)
        log_path = os.path.join(session_dir, "log")
        argv = self._common_args(cid, oci, session_id, session_dir, os.path.join(session_dir, "pidfile"),
                                 log_path, exit_dir, session_dir)
        argv += ["-P", os.path.join(session_dir, "conmon.pid"), "-e", "--exec-process-spec", process_file]
        if terminal:
            argv.append("-t")
        messages = self._launch(argv, cwd=session_dir, tmp_name=session_id, expect=1, timeout=timeout,
                                what=f"exec in {cid}")
        return ExecLaunch(pid=messages[0], exit_file=os.path.join(exit_dir, cid), log_path=log_path)

    def exec_attach(self, cid: str, oci: OciRuntime, *, session_id: str, session_dir: str, process_file: str,
                    terminal: bool = True, stdin: bool = True,
                    timeout: float = _DEFAULT_TIMEOUT) -> ExecAttachLaunch:
        """Prepare an interactive exec session (``-e --exec-attach``, notes §7) without starting it.

        Returns once conmon reported on the attach pipe (``{"data": 0}``): the socket
        ``<socket_dir>/<session_id>/attach`` and the FIFOs ``<session_dir>/ctl``/``winsz`` exist.
        Unlike Podman, nothing the session needs later stays in this process, so another process
        may start it and read its results:

        - the start pipe is the named FIFO ``<session_dir>/start``, opened O_RDWR here and given
          as ``_OCI_STARTPIPE``: conmon's first process reads our first byte from it, and its child
          blocks on a second read before it runs ``runc exec``. Whoever writes one byte to the
          FIFO later starts the process (an open with O_NONBLOCK fails with ENXIO once conmon is gone);
        - the sync pipe is the regular file ``<session_dir>/sync`` (O_APPEND): conmon writes the
          pid (or ``-1`` with runc's error) and later the exit code there, and never gets EPIPE;
        - the attach pipe is a socketpair we read once and close (conmon writes it only once).

        The console socket's TMPDIR (``<socket_dir>/../t/<session_id>``) must outlive the start:
        ``remove_session_tmp`` once the process runs. ``-l none``: the session keeps no log.
        With ``stdin`` and no ``terminal``, the first client that disconnects (or shuts down its
        writing side) closes the process's stdin (Docker's ``exec -i``).
        """
        exit_dir = os.path.join(session_dir, "exits")
        os.makedirs(exit_dir, mode=0o700, exist_ok=True)
        os.makedirs(self.socket_dir, mode=0o700, exist_ok=True)
        start_fifo = os.path.join(session_dir, "start")
        sync_file = os.path.join(session_dir, "sync")
        tmpdir = self.session_tmp(session_id)
        os.makedirs(tmpdir, mode=0o700, exist_ok=True)
        argv = self._common_args(cid, oci, session_id, session_dir, os.path.join(session_dir, "pidfile"),
                                 os.path.join(session_dir, "log"), exit_dir, session_dir)
        argv[argv.index("-l") + 1] = "none"
        argv += ["-P", os.path.join(session_dir, "conmon.pid"), "-e", "--exec-attach",
                 "--exec-process-spec", process_file]
        if terminal:
            argv.append("-t")
        elif stdin:
            argv.append("-i")
        os.mkfifo(start_fifo, 0o600)
        start_fd = os.open(start_fifo, os.O_RDWR | os.O_CLOEXEC)
        sync_fd = os.open(sync_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
        attach_parent, attach_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            "_OCI_SYNCPIPE": str(sync_fd),
            "_OCI_STARTPIPE": str(start_fd),
            "_OCI_ATTACHPIPE": str(attach_child.fileno()),
            "TMPDIR": tmpdir,
        }
        what = f"exec in {cid}"
        try:
            # The first byte: conmon's first read, before it forks (the cgroup window of §2).
            os.write(start_fd, b"\0")
            try:
                proc = subprocess.Popen(
                    argv, cwd=session_dir, env=env, pass_fds=(sync_fd, start_fd, attach_child.fileno()),
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                    start_new_session=True,
                )
            except OSError as exc:
                raise CommandError(f"cannot run {self.path}: {exc.strerror}") from exc
            finally:
                os.close(start_fd)
                os.close(sync_fd)
                attach_child.close()
            returncode = proc.wait()
            stderr = proc.stderr.read().decode("utf-8", "replace").strip()
            proc.stderr.close()
            if returncode != 0:
                raise CommandError(f"conmon for {what} failed: {stderr or f'exit status {returncode}'}",
                                   returncode, stderr)
            attach_parent.settimeout(timeout)
            try:
                data = attach_parent.recv(_MAX_MESSAGE)
            except socket.timeout:
                raise CommandError(f"conmon for {what} did not report within {timeout:g}s") from None
            if not data:
                raise CommandError(f"conmon for {what} exited before reporting (see the host's syslog)")
            message = json.loads(data.splitlines()[0])
            if int(message.get("data", -1)) < 0:
                text = runc_message(message.get("message", "")) or "unknown error"
                raise CommandError(f"conmon for {what} failed: {text}")
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        finally:
            attach_parent.close()
        try:
            with open(os.path.join(session_dir, "conmon.pid"), "rb") as f:
                conmon_pid = int(f.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            conmon_pid = 0
        return ExecAttachLaunch(conmon_pid=conmon_pid, socket=self.attach_path(session_id),
                                ctl=os.path.join(session_dir, "ctl"), start_fifo=start_fifo,
                                sync_file=sync_file, exit_file=os.path.join(exit_dir, cid), tmpdir=tmpdir)

    def session_tmp(self, session_id: str) -> str:
        """conmon's TMPDIR for ``session_id`` (its console socket lives there, §10)."""
        return os.path.join(os.path.dirname(self.socket_dir), "t", session_id)

    def remove_session_tmp(self, session_id: str) -> None:
        shutil.rmtree(self.session_tmp(session_id), ignore_errors=True)

    def _launch(self, argv: list[str], *, cwd: str, tmp_name: str, expect: int, timeout: float,
                what: str) -> list[int]:
        """Run conmon (steps 1-3 of the module docstring); return the first ``expect`` sync messages."""
        tmpdir = os.path.join(os.path.dirname(self.socket_dir), "t", tmp_name)
        os.makedirs(tmpdir, mode=0o700, exist_ok=True)
        try:
            return self._launch_in(argv, cwd=cwd, tmpdir=tmpdir, expect=expect, timeout=timeout, what=what)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)

    def _launch_in(self, argv: list[str], *, cwd: str, tmpdir: str, expect: int, timeout: float,
                   what: str) -> list[int]:
        sync_parent, sync_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        start_parent, start_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            "_OCI_SYNCPIPE": str(sync_child.fileno()),
            "_OCI_STARTPIPE": str(start_child.fileno()),
            "TMPDIR": tmpdir,
        }
        try:
            try:
                proc = subprocess.Popen(
                    argv, cwd=cwd, env=env, pass_fds=(sync_child.fileno(), start_child.fileno()),
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                    start_new_session=True,
                )
            except OSError as exc:
                raise CommandError(f"cannot run {self.path}: {exc.strerror}") from exc
            finally:
                sync_child.close()
                start_child.close()
            # The start-pipe window: conmon waits for this byte before it forks its daemon.
            start_parent.send(b"\0")
            # conmon's first process only forks and exits: a blocking wait (Popen.wait with a
            # timeout would poll with sleeps, on the path docker run is benchmarked against).
            returncode = proc.wait()
            if returncode != 0:
                stderr = proc.stderr.read().decode("utf-8", "replace").strip()
                proc.stderr.close()
                raise CommandError(f"conmon for {what} failed: {stderr or f'exit status {returncode}'}",
                                   returncode, stderr)
            proc.stderr.close()  # The daemon's stderr is /dev/null (§2): nothing to read.
            sync_parent.settimeout(timeout)
            results = []
            while len(results) < expect:
                try:
                    data = sync_parent.recv(_MAX_MESSAGE)
                except socket.timeout:
                    raise CommandError(f"conmon for {what} did not report within {timeout:g}s") from None
                if not data:
                    raise CommandError(f"conmon for {what} exited before reporting (see the host's syslog)")
                for line in data.splitlines():
                    if not line.strip():
                        continue
                    message = json.loads(line)
                    value = int(message.get("data", -1))
                    if value < 0:
                        text = runc_message(message.get("message", "")) or "unknown error"
                        raise CommandError(f"OCI runtime create failed: {text}", value,
                                           message.get("message", ""))
                    results.append(value)
            return results
        finally:
            sync_parent.close()
            start_parent.close()


#
# Files conmon writes
#


def read_exit_file(path: str) -> int | None:
    """The exit code conmon wrote to ``path``; None while the file is missing or still empty."""
    try:
        with open(path, "rb") as f:
            text = f.read(64).strip()
    except FileNotFoundError:
        return None
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def conmon_alive(pid: int, cid: str) -> bool:
    """True if ``pid`` is a live conmon monitoring ``cid`` (``-c cid`` on its command line).

    A zombie (its cmdline is empty) or a reused pid answers False.
    """
    if not pid or pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    if not argv or not os.path.basename(argv[0]).startswith(b"conmon"):
        return False
    target = cid.encode()
    return any(argv[i] == b"-c" and argv[i + 1] == target for i in range(len(argv) - 1))


def process_start_time(pid: int) -> int | None:
    """The start time of ``pid`` (clock ticks after boot, /proc/<pid>/stat field 22); None if gone.

    Recorded with a pid so that a pid reused by another process is not mistaken for ours.
    """
    if not pid or pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may contain spaces: split after the last ")".
    fields = data[data.rfind(b")") + 2:].split()
    if len(fields) < 20 or fields[0] == b"Z":
        return None
    return int(fields[19])


#
# Waiting
#

# inotify(7) events: a file written and closed, renamed into a watched dir, created, written.
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_MODIFY = 0x00000002
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_init1.argtypes = (ctypes.c_int,)
_libc.inotify_add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)


_IN_IGNORED = 0x00008000
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)

# Descriptors FileWatch.close() leaves to the closing thread of this process (see there).
_closing: "queue.SimpleQueue[int] | None" = None
_closing_lock = threading.Lock()


# More waiting to be closed than this and a close is done by its caller: inotify instances are
# limited per user (fs.inotify.max_user_instances, 128 by default).
_CLOSING_MAX = 32


def _close_later(fd: int) -> None:
    global _closing
    with _closing_lock:
        if _closing is None:
            _closing = queue.SimpleQueue()
            threading.Thread(target=_closer, args=(_closing,), name="berth-inotify-close",
                             daemon=True).start()
        if _closing.qsize() < _CLOSING_MAX:
            _closing.put(fd)
            return
    os.close(fd)


def _closer(fds: "queue.SimpleQueue[int]") -> None:
    while True:
        fd = fds.get()
        with contextlib.suppress(OSError):
            os.close(fd)


def _after_fork_in_child() -> None:
    # The closing thread is not in the child (a Celery pool process): it closes the copies of what
    # was still waiting, and starts its own thread when it needs one.
    global _closing, _closing_lock
    waiting, _closing, _closing_lock = _closing, None, threading.Lock()
    while waiting is not None and not waiting.empty():
        with contextlib.suppress(OSError, queue.Empty):
            os.close(waiting.get_nowait())


os.register_at_fork(after_in_child=_after_fork_in_child)


class FileWatch:
    """inotify on a few directories or files: ``wait(timeout)`` returns when one of them changes.

    Used to wait for exit files and log growth without polling; ``extra_fds`` (pidfds) also wake
    it. A close()d watch may not be reused.
    """

    def __init__(self, paths: Iterable[str | tuple[str, int]], mask: int = IN_CLOSE_WRITE | IN_MOVED_TO):
        """Watch each path for ``mask`` (or its own mask, given as ``(path, mask)``). A path that
        does not exist yet is skipped."""
        self.fd = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self.fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self._paths: dict[int, str] = {}  # watch descriptor -> path
        try:
            for item in paths:
                path, path_mask = item if isinstance(item, tuple) else (item, mask)
                self.add(path, path_mask)
        except OSError:
            os.close(self.fd)
            raise

    def add(self, path: str, mask: int = IN_CLOSE_WRITE | IN_MOVED_TO) -> bool:
        """Watch one more path; False if it does not exist. A watched path that is deleted stops
        being watched by itself."""
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT:
                return False
            raise OSError(err, os.strerror(err), path)
        self._paths[wd] = path
        return True

    def wait(self, timeout: float | None, extra_fds: Iterable[int] = ()) -> bool:
        """Block until an event (True) or ``timeout`` seconds (False). Drains pending events."""
        return self._poll(timeout, extra_fds) is not None

    def changed(self, timeout: float | None) -> set[str]:
        """Block until an event or ``timeout`` seconds; the watched paths that had one (empty after
        the timeout). Drains pending events."""
        return self._poll(timeout, ()) or set()

    def _poll(self, timeout: float | None, extra_fds: Iterable[int]) -> set[str] | None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        for fd in extra_fds:
            poller.register(fd, select.POLLIN)
        ready = poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
        changed = self._drain()
        return changed if ready else None

    def _drain(self) -> set[str]:
        changed = set()
        try:
            while data := os.read(self.fd, 65536):
                offset = 0
                while offset + _EVENT.size <= len(data):
                    wd, mask, _, length = _EVENT.unpack_from(data, offset)
                    offset += _EVENT.size + length
                    if wd in self._paths:
                        if mask & _IN_IGNORED:  # the path went, and its watch with it: no change of it
                            del self._paths[wd]
                        else:
                            changed.add(self._paths[wd])
        except BlockingIOError:
            pass
        return changed

    def close(self) -> None:
        """Give the inotify descriptor to a thread that closes it: closing one waits for the
        kernel's fsnotify SRCU grace period whenever a watch went lately (5 to 20 ms here, every
        so often), and the caller (a waiter about to answer docker run --rm, the stop that waited
        for an exit) has better things to do."""
        if self.fd >= 0:
            _close_later(self.fd)
            self.fd = -1

    def __enter__(self) -> "FileWatch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _pidfd(pid: int) -> int | None:
    if not pid or pid <= 0:
        return None
    try:
        return os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return None


def wait_for_exit(exit_file: str, *, watch_pids: Iterable[int] = (), timeout: float | None = None) -> bool:
    """Block until conmon writes ``exit_file`` or every process in ``watch_pids`` is gone.

    ``watch_pids`` are the processes whose end means no exit file will come (conmon, or the
    container's own process when its conmon already died). Returns True when the file has a code
    or a watched process ended (the caller then reads the state), False on timeout.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    pidfds = [fd for fd in (_pidfd(p) for p in watch_pids) if fd is not None]
    if list(watch_pids) and not pidfds:
        return True  # Everything we could watch is already gone.
    try:
        with FileWatch([os.path.dirname(exit_file)], IN_CLOSE_WRITE | IN_MOVED_TO) as watch:
            while True:
                if read_exit_file(exit_file) is not None:
                    return True
                if pidfds and all(_readable(fd) for fd in pidfds):
                    # The monitor ended: it writes the file before it exits, so look once more.
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                # Wake at least every second: a zombie conmon's pidfd is readable, but a pid
                # reparented elsewhere may not be, and the file may come through a rename.
                watch.wait(1.0 if remaining is None else min(remaining, 1.0), pidfds)
    finally:
        for fd in pidfds:
            os.close(fd)


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


#
# The k8s-file log
#


@dataclass
class LogRecord:
    """One line of a container's output: ``stream`` is "stdout" or "stderr", ``line`` ends with
    a newline unless the output ended without one, ``time_ns`` is when conmon read it."""

    stream: str
    line: bytes
    time_ns: int

    @property
    def timestamp(self) -> str:
        """Docker's form of the time in logs: RFC 3339 with nine fraction digits, in UTC."""
        return format_time_ns(self.time_ns, fixed=True)


class LogReader:
    """Reads conmon's k8s-file log (§3) incrementally and reassembles partial lines.

    Each record is ``<RFC3339Nano time with offset> <stdout|stderr> <F|P> <bytes>\\n``; ``P`` means
    the chunk ended without a newline and the next record of the same stream continues it. The
    time of a reassembled line is that of its first chunk. The file is read in binary: a TTY's
    ``\\r\\n`` stays as it is.
    """

    def __init__(self, path: str):
        self.path = path
        self._file = None
        self._rest = b""
        self._partial: dict[str, tuple[int, bytearray]] = {}

    def _open(self) -> bool:
        if self._file is None:
            try:
                self._file = open(self.path, "rb")
            except FileNotFoundError:
                return False
        return True

    def read_available(self) -> list[LogRecord]:
        """The lines completed since the last call (up to the current end of the file)."""
        if not self._open():
            return []
        data = self._rest + self._file.read()
        lines = data.split(b"\n")
        self._rest = lines.pop()
        out = []
        for raw in lines:
            record = self._parse(raw)
            if record is not None:
                out.append(record)
        return out

    def flush(self) -> list[LogRecord]:
        """Partial lines still waiting for their end (the output stopped without a newline)."""
        out = [LogRecord(stream, bytes(buf), ts) for stream, (ts, buf) in self._partial.items() if buf]
        self._partial.clear()
        return sorted(out, key=lambda r: r.time_ns)

    def _parse(self, raw: bytes) -> LogRecord | None:
        parts = raw.split(b" ", 3)
        if len(parts) < 3:
            return None
        stream = parts[1].decode("ascii", "replace")
        content = parts[3] if len(parts) > 3 else b""
        try:
            ts = parse_time_ns(parts[0])
        except ValueError:
            return None
        if parts[2] == b"P":
            first, buf = self._partial.get(stream, (ts, bytearray()))
            buf += content
            self._partial[stream] = (first, buf)
            return None
        first, buf = self._partial.pop(stream, (ts, bytearray()))
        return LogRecord(stream, bytes(buf) + content + b"\n", first)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def parse_time_ns(text: bytes | str) -> int:
    """``2026-11-27T18:10:34.917373622+00:00`` (or ``...Z``) -> nanoseconds since the epoch."""
    if isinstance(text, bytes):
        text = text.decode("ascii")
    if len(text) < 19 or text[10] != "T":
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    date, clock = text[:10], text[11:19]
    rest = text[19:]
    nanos = 0
    if rest.startswith("."):
        digits = 0
        while 1 + digits < len(rest) and rest[1 + digits].isdigit():
            digits += 1
        frac = rest[1:1 + digits]
        nanos = int((frac + "000000000")[:9]) if frac else 0
        rest = rest[1 + digits:]
    offset = 0
    if rest and rest != "Z":
        sign = 1 if rest[0] == "+" else -1
        hours, _, minutes = rest[1:].partition(":")
        offset = sign * (int(hours) * 3600 + int(minutes or 0) * 60)
    year, month, day = (int(x) for x in date.split("-"))
    hour, minute, second = (int(x) for x in clock.split(":"))
    days = _days_from_civil(year, month, day)
    seconds = days * 86400 + hour * 3600 + minute * 60 + second - offset
    return seconds * 1_000_000_000 + nanos


def format_time_ns(ns: int, *, fixed: bool = False) -> str:
    """Nanoseconds since the epoch -> ``2026-11-27T18:10:34.91737362Z``: Go's RFC3339Nano, which
    drops the fraction's trailing zeros (Docker's inspect times); ``fixed`` keeps all nine digits
    (RFC3339NanoFixed, what ``docker logs -t`` prints)."""
    seconds, nanos = divmod(int(ns), 1_000_000_000)
    days, rem = divmod(seconds, 86400)
    year, month, day = _civil_from_days(days)
    hour, rem = divmod(rem, 3600)
    minute, second = divmod(rem, 60)
    text = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
    if fixed:
        text += f".{nanos:09d}"
    elif nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    return text + "Z"


def _days_from_civil(y: int, m: int, d: int) -> int:
    # Howard Hinnant's days_from_civil: days since 1970-01-01 of a proleptic Gregorian date.
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(z: int) -> tuple[int, int, int]:
    z += 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return y + (m <= 2), m, d
