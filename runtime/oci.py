"""Runc: a thin wrapper over the OCI runtime binary.

As libpod/oci.go puts it, the OCI runtime wrapper is "a fairly thin wrapper around the actual
runtime, and is not expected to include things like state management logic": every method builds
one runc command line, runs it and parses its answer. Which calls are legal in which state is
decided by runtime.containers. ``create`` is not here: conmon runs ``runc create`` (runtime.monitor).

Every call passes ``--root`` (Berth keeps runc's state under ``<run_root>/runc``, not /run/runc).
Failures raise CommandError with runc's own message (the ``msg="..."`` of its log line).
"""

from __future__ import annotations

import json
import os
import re
import subprocess

from runtime.errors import CommandError, NotFound

__all__ = ["Runc", "runc_message"]

# runc's log lines look like: time="2024-..." level=error msg="container \"x\" does not exist"
_MSG_RE = re.compile(r'msg="((?:[^"\\]|\\.)*)"')
_DEFAULT_TIMEOUT = 30.0


def runc_message(stderr: str) -> str:
    """The human part of runc's stderr: the last ``msg="..."`` unescaped, else the text stripped."""
    matches = _MSG_RE.findall(stderr or "")
    if matches:
        text = matches[-1]
        try:
            return json.loads(f'"{text}"')
        except ValueError:
            return text.replace('\\"', '"')
    return (stderr or "").strip()


class Runc:
    """The runc binary at ``path``, keeping its container state under ``root``."""

    def __init__(self, path: str, root: str):
        self.path = path
        self.root = root
        self._features: dict | None = None
        self._features_read = False

    def argv(self, *args: str) -> list[str]:
        """The full command line of a runc call (global flags first)."""
        return [self.path, "--root", self.root, *args]

    def run(self, *args: str, timeout: float = _DEFAULT_TIMEOUT, input: bytes | None = None) -> bytes:
        """Run runc with ``args``; return its stdout. CommandError (runc's message) on failure."""
        try:
            proc = subprocess.run(self.argv(*args), input=input, capture_output=True, timeout=timeout,
                                  stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise CommandError(f"runc {args[0]} timed out after {timeout:g}s") from exc
        except OSError as exc:
            raise CommandError(f"cannot run {self.path}: {exc.strerror}") from exc
        if proc.returncode != 0:
            stderr = proc.stderr.decode("utf-8", "replace")
            message = runc_message(stderr) or f"exit status {proc.returncode}"
            if "does not exist" in message:
                raise NotFound(message)
            raise CommandError(f"runc {args[0]} failed: {message}", proc.returncode, stderr)
        return proc.stdout

    #
    # Lifecycle
    #

    def start(self, cid: str) -> None:
        """Let a created container run its process (``runc start``)."""
        self.run("start", cid)

    def kill(self, cid: str, signal: str | int = "TERM", *, all_processes: bool = False) -> None:
        """Send ``signal`` (a name like TERM/SIGTERM or a number) to the container's init (or all)."""
        args = ["kill"]
        if all_processes:
            args.append("--all")
        self.run(*args, cid, str(signal))

    def delete(self, cid: str, *, force: bool = False) -> None:
        """Delete the container's runc state (``--force`` kills it first). Missing: no error."""
        try:
            self.run("delete", *(["--force"] if force else []), cid)
        except NotFound:
            pass

    def pause(self, cid: str) -> None:
        """Freeze every process of the container (cgroup freezer)."""
        self.run("pause", cid)

    def resume(self, cid: str) -> None:
        """Thaw a paused container."""
        self.run("resume", cid)

    #
    # Queries
    #

    def state(self, cid: str) -> dict | None:
        """``runc state``: {"id", "pid", "status" (created/running/paused/stopped), "bundle", ...};
        None when runc does not know the container."""
        if not os.path.exists(os.path.join(self.root, cid, "state.json")):
            return None  # Saves a process for the common "never created / deleted" case.
        try:
            return json.loads(self.run("state", cid))
        except NotFound:
            return None

    def list(self) -> list[dict]:
        """``runc list``: every container runc keeps state for."""
        if not os.path.isdir(self.root):
            return []
        return json.loads(self.run("list", "--format", "json") or b"null") or []

    def ps(self, cid: str) -> list[int]:
        """The host pids of the container's processes."""
        return [int(p) for p in json.loads(self.run("ps", "--format", "json", cid) or b"null") or []]

    def exists(self, cid: str) -> bool:
        """True if runc keeps state for ``cid`` (no process is run)."""
        return os.path.exists(os.path.join(self.root, cid))

    def features(self) -> dict | None:
        """``runc features`` (what this runc can do), read once; None if this runc lacks the command."""
        if not self._features_read:
            try:
                self._features = json.loads(self.run("features", timeout=10))
            except (CommandError, ValueError):
                self._features = None
            self._features_read = True
        return self._features

    #
    # Exec
    #

    def exec_argv(self, cid: str, process_file: str, *, detach: bool = False, pid_file: str | None = None,
                  tty: bool = False, console_socket: str | None = None) -> list[str]:
        """The command line of ``runc exec --process FILE`` (for callers that run it themselves)."""
        args = ["exec", "--process", process_file]
        if detach:
            args.append("--detach")
        if pid_file:
            args += ["--pid-file", pid_file]
        if tty:
            args.append("--tty")
        if console_socket:
            args += ["--console-socket", console_socket]
        return self.argv(*args, cid)

    def exec(self, cid: str, process_file: str, *, stdin: bytes | None = None,
             timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run the process described by ``process_file`` in the container and wait for it.

        Returns the CompletedProcess: its returncode is the process's exit status (runc's own
        failures also exit non-zero, with runc's message on stderr).
        """
        argv = self.exec_argv(cid, process_file)
        return subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout,
                              stdin=None if stdin is not None else subprocess.DEVNULL)
