"""Network namespaces Berth makes itself: a bind mount of an nsfs file under ``<run_root>/netns``.

notes/cni.md §1: fork; in the child ``unshare(CLONE_NEWNET)``, bring ``lo`` up (one ioctl, so the
loopback plugin is not needed) and bind-mount ``/proc/self/ns/net`` on the target file; the parent
waits (about 2 ms). ``os.unshare`` only exists from Python 3.12, hence ctypes. A namespace is live
while its file is a mount point (``os.path.ismount``); a file left by a previous boot is a plain
file and must not be given to runc ("failed to setns into net namespace").
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import socket
import struct

from runtime.errors import EngineError

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MNT_DETACH = 2
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _lo_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        answer = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, struct.pack("16sH22x", b"lo", 0))
        flags = struct.unpack("16sH22x", answer)[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def create(path: str) -> str:
    """Make a new network namespace (``lo`` up) bound at ``path``; return ``path``."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    if os.path.ismount(path):
        raise EngineError(f"network namespace {path} already exists")
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.close(fd)
    pid = os.fork()
    if pid == 0:  # child: no Python-level locks, only syscalls, then _exit.
        code = 1
        try:
            if _libc.unshare(CLONE_NEWNET) == 0:
                code = 2
                _lo_up()
                code = 3
                if _libc.mount(b"/proc/self/ns/net", os.fsencode(path), None, MS_BIND, None) == 0:
                    code = 0
        except BaseException:
            pass
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        with contextlib.suppress(OSError):
            os.unlink(path)
        step = {1: "unshare", 2: "bringing lo up", 3: "mount"}.get(code, "fork")
        raise EngineError(f"could not create network namespace {path}: {step} failed")
    return path


def remove(path: str) -> None:
    """Unmount and delete a namespace file (tolerates one already gone or never mounted)."""
    if os.path.ismount(path):
        if _libc.umount2(os.fsencode(path), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err not in (22, 2):  # EINVAL: not a mount any more; ENOENT
                raise EngineError(f"could not unmount network namespace {path}: {os.strerror(err)}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def is_live(path: str) -> bool:
    return bool(path) and os.path.ismount(path)
