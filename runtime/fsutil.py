"""Small filesystem helpers shared by the stores of runtime/ (blobs, layers, images, volumes,
containers, networks).

Each helper does one thing the same way for every caller; where callers want something slightly
different (a JSON indent), it is a parameter.
"""

import json
import os
import secrets


def fsync_dir(path: str) -> None:
    """fsync a directory so that a rename, create or unlink in it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_exactly(reader, n: int) -> bytes:
    """Read ``n`` bytes from ``reader``, or fewer only at the end of the stream (``read`` may
    return less than asked)."""
    chunks = []
    while n > 0:
        chunk = reader.read(n)
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def write_json_synced(path: str, doc) -> None:
    """Write ``doc`` to ``path`` as JSON (indent 2, sorted keys) and fsync the file.

    Written in place, not atomically: for a file in a staging directory that is renamed into
    place (and its parent directory fsynced) once complete.
    """
    with open(path, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def replace_json(path: str, doc, *, indent: int | None = None) -> None:
    """Replace ``path`` with ``doc`` as JSON: written to ``<path>.tmp-<random>``, then renamed over it.

    Readers see the old or the new file, never a part of one. Neither the file nor the directory
    is fsynced (a crash may lose the update, not tear it); a failed write leaves its temp file.
    """
    tmp = f"{path}.tmp-{secrets.token_hex(4)}"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=indent)
    os.replace(tmp, path)
