"""The offline starter image: ``busybox:latest`` made from the host's busybox-static.

A new machine has no internet route to Docker Hub, so `make run` gives its user an image to run
from the Debian package busybox-static: one layer with /bin/busybox, a symlink for every applet,
and the few files a shell expects (/etc/passwd, /etc/group, /tmp...).
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import time
from typing import BinaryIO

BUSYBOX = "/bin/busybox"
STARTER_REFERENCE = "busybox:latest"
STARTER_CHANGES = ('ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'CMD ["sh"]')

PASSWD = b"root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\nnobody:x:65534:65534:nobody:/home:/bin/false\n"
GROUP = b"root:x:0:\ndaemon:x:1:\nnogroup:x:65534:\n"
DIRECTORIES = {"bin": 0o755, "dev": 0o755, "etc": 0o755, "home": 0o755, "proc": 0o555, "root": 0o700,
               "sbin": 0o755, "sys": 0o555, "tmp": 0o1777, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755,
               "var": 0o755, "var/spool": 0o755, "var/www": 0o755}


def applets(busybox: str = BUSYBOX) -> list[str]:
    """The install paths of busybox's applets, e.g. ``bin/sh``, ``usr/bin/wget``."""
    out = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True, timeout=10).stdout
    return sorted({line.strip().lstrip("/") for line in out.splitlines() if line.strip()})


def write_rootfs(out: BinaryIO, busybox: str = BUSYBOX) -> None:
    """Write the starter root filesystem as an uncompressed tar to ``out``."""
    mtime = int(os.stat(busybox).st_mtime) if os.path.exists(busybox) else int(time.time())

    def entry(name: str, kind: bytes, mode: int, **extra) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, mtime, 0, 0
        for k, v in extra.items():
            setattr(info, k, v)
        return info

    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, mode in DIRECTORIES.items():
            tar.addfile(entry(name, tarfile.DIRTYPE, mode))
        with open(busybox, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            tar.addfile(entry("bin/busybox", tarfile.REGTYPE, 0o755, size=size), f)
        for path in applets(busybox):
            if path == "bin/busybox":
                continue
            tar.addfile(entry(path, tarfile.SYMTYPE, 0o777, linkname="/bin/busybox"))
        for name, data in (("etc/passwd", PASSWD), ("etc/group", GROUP), ("etc/hostname", b"busybox\n"),
                           ("etc/hosts", b"127.0.0.1\tlocalhost\n"), ("etc/resolv.conf", b"")):
            tar.addfile(entry(name, tarfile.REGTYPE, 0o644, size=len(data)), io.BytesIO(data))


def ensure_starter_image(images, busybox: str = BUSYBOX):
    """Import the starter image unless ``busybox:latest`` exists; return its record, or None if it did."""
    from .errors import NotFound

    try:
        images.resolve(STARTER_REFERENCE)
        return None
    except NotFound:
        pass
    buffer = io.BytesIO()
    write_rootfs(buffer, busybox)
    buffer.seek(0)
    return images.import_tar(buffer, changes=STARTER_CHANGES, message="Berth starter image from the host's busybox-static",
                             reference=STARTER_REFERENCE)
