"""OciRuntime: a thin wrapper over an OCI runtime binary, runc or crun.

As libpod/oci.go puts it, the OCI runtime wrapper is "a fairly thin wrapper around the actual
runtime, and is not expected to include things like state management logic": every method builds
one command line, runs it and parses its answer. Which calls are legal in which state is decided
by runtime.containers. ``create`` is not here: conmon runs ``<runtime> create`` (runtime.monitor).

The two speak the same command line for everything Berth asks (start, kill [--all], delete
[--force], pause, resume, state, list/ps --format json, exec --process); they differ in where
their state lives (runc: ``<root>/<id>/state.json``, crun: ``<root>/<id>/status``) and in how they
word errors (runc: a ``level=error msg="..."`` log line; crun: the bare text, and a missing
container is "error opening file `<root>/<id>/status`: No such file or directory").

Every call passes ``--root`` (Berth keeps each runtime's state under ``<run_root>/<name>``, not
/run/runc or /run/crun). Failures raise CommandError with the runtime's own message.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import os
import re
import subprocess
import tempfile

from runtime.errors import CommandError, NotFound

__all__ = ["CRUN_EXEC_FAILURE_RE", "OciRuntime", "RUNTIMES", "SeccompCache", "runc_message", "runc_not_found"]

# The runtimes Berth can drive, by the name Docker's --runtime uses.
RUNTIMES = ("runc", "crun")

# runc's log lines look like: time="2024-..." level=error msg="container \"x\" does not exist"
_MSG_RE = re.compile(r'msg="((?:[^"\\]|\\.)*)"')
_DEFAULT_TIMEOUT = 30.0


def runc_message(stderr: str) -> str:
    """The human part of a runtime's stderr: runc's last ``msg="..."`` unescaped, else the text
    stripped (crun's), a program that is not there said in runc's (and Docker's) words."""
    matches = _MSG_RE.findall(stderr or "")
    if matches:
        text = matches[-1]
        try:
            return json.loads(f'"{text}"')
        except ValueError:
            return text.replace('\\"', '"')
    text = (stderr or "").strip()
    return _CRUN_NOT_FOUND_RE.sub(lambda match: runc_not_found(match.group(1)), text)


def runc_not_found(name: str) -> str:
    """runc's (and Docker's) words for a program ``name`` that is not in the container."""
    if "/" in name:
        return f'exec: "{name}": stat {name}: no such file or directory'
    return f'exec: "{name}": executable file not found in $PATH'


# crun: executable file `nope` not found in $PATH: No such file or directory
_CRUN_NOT_FOUND_RE = re.compile(
    r"executable file `(.*?)` not found in \$PATH(?:: No such file or directory)?")
# What crun (exit status 255) says on stderr when the process of an exec could not start.
CRUN_EXEC_FAILURE_RE = re.compile(
    r"^(executable file `.*` not found|open executable: |exec container process )")


class OciRuntime:
    """The OCI runtime ``name`` (runc or crun), its binary at ``path``, keeping its container state
    under ``root``."""

    def __init__(self, name: str, path: str, root: str):
        if name not in RUNTIMES:
            raise ValueError(f"unknown OCI runtime {name!r}")
        self.name = name
        self.path = path
        self.root = root
        # The file every container of this runtime has in its state dir.
        self._state_file = "status" if name == "crun" else "state.json"
        self._features: dict | None = None
        self._features_read = False

    def argv(self, *args: str) -> list[str]:
        """The full command line of a runtime call (global flags first)."""
        return [self.path, "--root", self.root, *args]

    def run(self, *args: str, timeout: float = _DEFAULT_TIMEOUT, input: bytes | None = None) -> bytes:
        """Run the runtime with ``args``; return its stdout. CommandError (its message) on failure."""
        try:
            proc = subprocess.run(self.argv(*args), input=input, capture_output=True, timeout=timeout,
                                  stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise CommandError(f"{self.name} {args[0]} timed out after {timeout:g}s") from exc
        except OSError as exc:
            raise CommandError(f"cannot run {self.path}: {exc.strerror}") from exc
        if proc.returncode != 0:
            stderr = proc.stderr.decode("utf-8", "replace")
            message = runc_message(stderr) or f"exit status {proc.returncode}"
            if self._missing(message):
                raise NotFound(message)
            raise CommandError(f"{self.name} {args[0]} failed: {message}", proc.returncode, stderr)
        return proc.stdout

    def _missing(self, message: str) -> bool:
        """True if ``message`` says the container is unknown to this runtime."""
        if "does not exist" in message:  # runc: container "x" does not exist
            return True
        # crun: error opening file `<root>/<id>/status`: No such file or directory, or
        # cannot open directory '<root>/<id>': No such file or directory
        if self.name != "crun" or "No such file or directory" not in message:
            return False
        return re.search(re.escape(self.root.rstrip("/")) + r"/[^/`']+(/status)?[`']", message) is not None

    #
    # Lifecycle
    #

    def start(self, cid: str) -> None:
        """Let a created container run its process (``<runtime> start``)."""
        self.run("start", cid)

    def kill(self, cid: str, signal: str | int = "TERM", *, all_processes: bool = False) -> None:
        """Send ``signal`` (a name like TERM/SIGTERM or a number) to the container's init (or all)."""
        args = ["kill"]
        if all_processes:
            args.append("--all")
        self.run(*args, cid, str(signal))

    def delete(self, cid: str, *, force: bool = False) -> None:
        """Delete the container's runtime state (``--force`` kills it first). Missing: no error."""
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
        """``<runtime> state``: {"id", "pid", "status" (created/running/paused/stopped), "bundle", ...};
        None when the runtime does not know the container."""
        if not os.path.exists(os.path.join(self.root, cid, self._state_file)):
            return None  # Saves a process for the common "never created / deleted" case.
        try:
            return json.loads(self.run("state", cid))
        except NotFound:
            return None

    def list(self) -> list[dict]:
        """``<runtime> list``: every container it keeps state for."""
        if not os.path.isdir(self.root):
            return []
        return json.loads(self.run("list", "--format", "json") or b"null") or []

    def ps(self, cid: str) -> list[int]:
        """The host pids of the container's processes."""
        return [int(p) for p in json.loads(self.run("ps", "--format", "json", cid) or b"null") or []]

    def exists(self, cid: str) -> bool:
        """True if the runtime keeps state for ``cid`` (no process is run)."""
        return os.path.exists(os.path.join(self.root, cid))

    def features(self) -> dict | None:
        """``<runtime> features`` (what it can do), read once; None if it lacks the command (crun 1.8)."""
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
        """The command line of ``<runtime> exec --process FILE`` (for callers that run it themselves)."""
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

        Returns the CompletedProcess: its returncode is the process's exit status (the runtime's
        own failures exit 255, with its message on stderr).
        """
        argv = self.exec_argv(cid, process_file)
        return subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout,
                              stdin=None if stdin is not None else subprocess.DEVNULL)


class SeccompCache:
    """Seccomp filters crun compiled, by profile, so that it compiles each profile once.

    Compiling Docker's profile for three syscall ABIs is most of a ``crun create`` (~10 of ~16 ms
    here). crun writes the filter it compiled for a container to its state dir
    (``<root>/<id>/seccomp.bpf``, which ``crun exec`` loads), and takes an already compiled one,
    base64, in the ``run.oci.seccomp_bpf_data`` annotation instead of compiling ``linux.seccomp``
    (Podman's containers/common passes crun its cached filters the same way). A filter depends
    only on the profile and on the libseccomp crun loads: the key is the profile's JSON and the
    identity of the crun binary and of that library, so a new crun or libseccomp compiles afresh.
    ``<directory>`` lives in the run root (gone at reboot, with the state it was copied from).
    """

    ANNOTATION = "run.oci.seccomp_bpf_data"

    def __init__(self, directory: str):
        self.directory = directory
        self._known: dict[str, str] = {}

    def _path(self, profile: dict, oci: OciRuntime) -> str | None:
        digest = hashlib.sha256(json.dumps(profile, sort_keys=True).encode())
        for path in (oci.path, _libseccomp_path()):
            try:
                st = os.stat(path) if path else None
            except OSError:
                return None
            if st is not None:
                digest.update(f"{path}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns};".encode())
        return os.path.join(self.directory, digest.hexdigest() + ".bpf")

    def get(self, profile: dict, oci: OciRuntime) -> str | None:
        """The annotation's value (the compiled filter, base64) for ``profile``, or None."""
        path = self._path(profile, oci)
        if path is None:
            return None
        if path not in self._known:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                return None
            if not _valid_bpf(data):
                return None
            self._known[path] = base64.b64encode(data).decode("ascii")
        return self._known[path]

    def drop(self, profile: dict, oci: OciRuntime) -> None:
        """Forget the filter of ``profile`` (a create that loaded it failed): compiled afresh next time."""
        path = self._path(profile, oci)
        if path is not None:
            self._known.pop(path, None)
            with contextlib.suppress(OSError):
                os.unlink(path)

    def put(self, profile: dict, oci: OciRuntime, cid: str) -> None:
        """Keep the filter crun compiled for ``profile`` when it created ``cid``."""
        path = self._path(profile, oci)
        if path is None or os.path.exists(path):
            return
        try:
            with open(os.path.join(oci.root, cid, "seccomp.bpf"), "rb") as f:
                data = f.read()
            if not _valid_bpf(data):
                return
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(temp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
        except OSError:
            return


@functools.lru_cache(maxsize=1)
def _libseccomp_path() -> str | None:
    """The libseccomp that crun loads (it is linked dynamically): its compiled filters depend on it."""
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.strip().startswith("libseccomp.so") and "=>" in line:
            return os.path.realpath(line.split("=>", 1)[1].strip())
    return None


def _valid_bpf(data: bytes) -> bool:
    """True for a classic BPF program: whole 8-byte instructions, at most BPF_MAXINSNS of them."""
    return 0 < len(data) <= 4096 * 8 and len(data) % 8 == 0
