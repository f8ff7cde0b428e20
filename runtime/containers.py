"""Containers: Berth's container records, and the engine's container verbs (Podman's container_api.go).

On disk (this module owns ``<root>/containers`` except the overlay dirs, which are runtime.rootfs's)::

    <root>/containers/.lock                        flock(2)ed while a name is taken or changed
    <root>/containers/<id>/config.json             the record (ContainerRecord.to_json): id (64 hex),
                                                   name, image id and reference, the ContainerConfig,
                                                   created, state, pid, exit code, started/finished
                                                   times, restart count, OOM flag, error
    <root>/containers/<id>/lock                    flock(2)ed around every state change of this container
    <root>/containers/<id>/bundle/config.json      the OCI spec (runtime.spec); conmon also keeps its
                                                   conmon.pid, pidfile, ctl and winsz FIFOs here
    <root>/containers/<id>/upper/ work/ merged/    the overlay rootfs (runtime.rootfs)
    <root>/containers/<id>/hosts hostname resolv.conf   bind-mounted at /etc/... (Docker's way)
    <root>/containers/<id>/ctr.log                 conmon's k8s-file log of the container's output
    <root>/containers/<id>/persist/                conmon's --persist-dir: ``exit`` and ``oom``
    <root>/containers/<id>/exits/<id>              conmon's --exit-dir file: the exit code
    <root>/containers/<id>/exec/<exec-id>/         a detached exec session: session.json, process.json,
                                                   log, exits/<id>
    <run_root>/runc/<id>/                          runc's state (every runc call has --root <run_root>/runc)
    <run_root>/s/<id[:32]>                         conmon's symlink to the bundle; ``<it>/attach`` is
                                                   the attach socket (keep <run_root> short: 107 bytes)
    /sys/fs/cgroup/*/berth/<id>                    the container's cgroups (linux.cgroupsPath)

The record is replaced atomically (temp file, rename): readers never lock and see the old or the
new one. Every state change holds the container's lock, and, as in libpod, first *syncs* the
record with what conmon and runc left (``sync``): a container whose process ended while nobody
watched gets its exit code from conmon's exit file. When that code is lost (conmon was killed, or
the host rebooted: the record's boot id differs), the container is EXITED with code 255, as
Docker shows a container whose exit status it never got.

The store is mechanism only: restart policies and ``--rm`` are applied by its caller (the worker),
which watches exits with ``has_exited``/``sync``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import select
import shlex
import shutil
import signal as signals
import socket
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

from runtime import cgroups
from runtime import spec as oci_spec
from runtime.attach import resize_ctl
from runtime.config import RuntimeConfig
from runtime.errors import AlreadyExists, CommandError, EngineError, InvalidArgument, InvalidState, NotFound
from runtime.fsutil import replace_json
from runtime.images import ImageStore
from runtime.layers import LayerStore
from runtime.monitor import (
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE_SELF,
    IN_MODIFY,
    IN_MOVE_SELF,
    IN_MOVED_TO,
    Conmon,
    FileWatch,
    LogReader,
    LogRecord,
    conmon_alive,
    format_time_ns,
    parse_time_ns,
    process_start_time,
    read_exit_file,
    read_sync_file,
    wait_for_exit,
)
from runtime.network.manager import check_endpoint_options
from runtime.oci import RUNTIMES, OciRuntime, SeccompCache, runc_not_found
from runtime.rootfs import is_mounted, mount_rootfs, unmount_rootfs
from runtime.state import ACTIVE_STATES, ContainerState, check_state
from runtime.volumes import ANONYMOUS_LABEL, VolumeStore
from runtime.volumes import validate_name as validate_volume_name

logger = logging.getLogger(__name__)

__all__ = [
    "ContainerConfig",
    "ContainerRecord",
    "ContainerStore",
    "LOST_EXIT_CODE",
    "Mount",
    "NetworkHook",
    "human_duration",
]

S = ContainerState
ZERO_TIME = "0001-01-01T00:00:00Z"
# The exit code of a container whose real one was lost (its conmon died, or the host rebooted).
LOST_EXIT_CODE = 255
DEFAULT_STOP_TIMEOUT = 10
# How long a removed container's exit code stays for a ``wait`` that saw it last before its exit.
REMOVED_KEEP_S = 600
# After SIGKILL a process dies at once unless it is stuck in the kernel (D state, a dead NFS...).
KILL_TIMEOUT = 30.0
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
_ID_RE = re.compile(r"^[0-9a-f]{64}$")
# The attach socket dir name under <run_root>/s: a prefix of the id, short enough for sun_path.
_CUUID_LENGTH = 32
GRAPH_DRIVER = "overlay2"


#
# Records
#


@dataclass
class Mount:
    """A mount asked for at create: a host directory (``kind="bind"``, ``source`` a host path) or a
    named volume (``kind="volume"``, ``source`` its name; empty: an anonymous volume, named at create)."""

    source: str
    target: str
    read_only: bool = False
    kind: str = "bind"
    # True for a volume Berth named itself (an image VOLUME or a bare ``-v /path``): ``rm -v`` removes it.
    anonymous: bool = False

    @classmethod
    def from_json(cls, doc: dict) -> "Mount":
        return cls(**{f.name: doc[f.name] for f in dataclasses.fields(cls) if f.name in doc})


def _default_restart_policy() -> dict:
    return {"Name": "no", "MaximumRetryCount": 0}


@dataclass
class ContainerConfig:
    """What ``docker create``/``run`` asks for. After ``create`` the record keeps the *effective*
    config: the image's Cmd, Entrypoint, Env, WorkingDir, User, Volumes, StopSignal, ExposedPorts
    and Labels merged in as Docker merges them."""

    image: str
    name: str = ""
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None
    env: list[str] = field(default_factory=list)
    working_dir: str = ""
    user: str = ""
    hostname: str = ""
    domainname: str = ""
    tty: bool = False
    open_stdin: bool = False
    stdin_once: bool = False
    labels: dict = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)
    read_only: bool = False
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    memory: int = 0
    nano_cpus: int = 0
    pids_limit: int = 0
    # "bridge" (default), "none", "host", "container:<name|id>", or a network the hook knows.
    network_mode: str = "bridge"
    restart_policy: dict = field(default_factory=_default_restart_policy)
    auto_remove: bool = False
    exposed_ports: dict = field(default_factory=dict)
    port_bindings: dict = field(default_factory=dict)
    # ``-P``: publish every exposed port on a free host port.
    publish_all_ports: bool = False
    stop_signal: str = ""
    stop_timeout: int | None = None
    privileged: bool = False
    # Kept as given, for the network hook (networks come later).
    extra_hosts: list[str] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)
    dns_search: list[str] = field(default_factory=list)
    dns_options: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    # The endpoint on the network of ``network_mode`` (NetworkingConfig at create): aliases
    # (--network-alias) and a fixed address (--ip), user-defined networks only, as with Docker.
    network_aliases: list[str] = field(default_factory=list)
    ipv4_address: str = ""
    # "no-new-privileges[=true|false]", "seccomp=unconfined".
    security_opt: list[str] = field(default_factory=list)
    # The OCI runtime (``--runtime``): "runc" or "crun"; empty at create: the store's default. A
    # record older than this field has "": it ran under runc.
    runtime: str = ""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: dict) -> "ContainerConfig":
        values = {f.name: doc[f.name] for f in dataclasses.fields(cls) if f.name in doc}
        mounts = values.get("mounts") or []
        values["mounts"] = [m if isinstance(m, Mount) else Mount.from_json(m) for m in mounts]
        return cls(**values)


@dataclass
class ContainerRecord:
    """One container as the store knows it (``<id>/config.json``).

    WARNING: a record is a snapshot taken when it was read; the container may have exited since.
    ``ContainerStore.get`` syncs before answering, but the answer can still go stale at once.
    """

    id: str
    name: str
    image_id: str
    # The image as the user named it (``busybox``, ``busybox:latest``, an id).
    image_ref: str
    config: ContainerConfig
    created: str
    state: ContainerState = S.CONFIGURED
    # The container's init process, as the host sees it; 0 when it has none.
    pid: int = 0
    exit_code: int = 0
    started_at: str = ZERO_TIME
    finished_at: str = ZERO_TIME
    restart_count: int = 0
    oom_killed: bool = False
    error: str = ""
    # Docker's Path and Args: the merged entrypoint + cmd, split as Docker shows them.
    path: str = ""
    args: list[str] = field(default_factory=list)
    # The monitor of the current run, and the facts that tell a live one from a reused pid.
    conmon_pid: int = 0
    pid_start: int | None = None
    boot_id: str = ""
    # stop()/kill() was asked for (Docker's HasBeenManuallyStopped, for unless-stopped).
    manually_stopped: bool = False
    # restart() stopped it and starts it next (Docker's HasBeenManuallyRestarted): this exit is
    # not one to act on (no --rm, no restart policy).
    restarting: bool = False

    @property
    def short_id(self) -> str:
        """The first 12 hex characters of the id, as ``docker ps`` shows it."""
        return self.id[:12]

    @property
    def running(self) -> bool:
        """True while the container has a process (running, paused or being stopped)."""
        return self.state in ACTIVE_STATES

    def to_json(self) -> dict:
        doc = dataclasses.asdict(self)
        doc["state"] = self.state.value
        doc["config"] = self.config.to_json()
        return doc

    @classmethod
    def from_json(cls, doc: dict) -> "ContainerRecord":
        values = {f.name: doc[f.name] for f in dataclasses.fields(cls) if f.name in doc}
        values["config"] = ContainerConfig.from_json(doc.get("config") or {})
        values["state"] = ContainerState(doc.get("state", S.CONFIGURED.value))
        return cls(**values)


class NetworkHook(Protocol):
    """Networking for containers (the CNI work comes later). Called with the container's lock held.

    ``prepare`` runs before ``runc create`` and returns the network namespace to join: a path, or
    None for a new empty one (runc brings lo up), or ``"host"`` for the host's. ``release`` runs
    when the container stops (it must tolerate being called twice). ``settings`` gives the
    ``NetworkSettings`` of inspect, and ``address`` the IP /etc/hosts names the container with.
    """

    def prepare(self, record: ContainerRecord) -> str | None: ...

    def release(self, record: ContainerRecord) -> None: ...


class DefaultNetwork:
    """No CNI yet: "bridge" and "none" get a new empty netns with lo up, "host" shares the
    host's, "container:<id>" joins that container's."""

    def __init__(self, store: "ContainerStore"):
        self.store = store

    def prepare(self, record: ContainerRecord) -> str | None:
        mode = record.config.network_mode
        if mode == "host":
            return "host"
        if mode.startswith("container:"):
            other = self.store.get(mode.partition(":")[2])
            if other.state not in (S.RUNNING, S.PAUSED) or not other.pid:
                raise InvalidState(f"cannot join network of a non running container: {other.id}")
            return f"/proc/{other.pid}/ns/net"
        return None

    def release(self, record: ContainerRecord) -> None:
        return None


#
# The store
#


class ContainerStore:
    """The containers of one engine root: records on disk and the lifecycle verbs.

    Safe between threads and processes: names are taken under ``containers/.lock``, state changes
    under each container's ``lock``. Every verb that changes state (1) locks, (2) syncs the record
    with conmon's exit file, (3) checks the state (runtime.state.ACCEPTS), (4) acts and writes.
    """

    def __init__(self, config: RuntimeConfig, images: ImageStore, layers: LayerStore, *,
                 network: NetworkHook | None = None, volumes: VolumeStore | None = None):
        self.config = config
        self.images = images
        self.layers = layers
        self.root = os.path.abspath(config.path("containers"))
        self.links_dir = os.path.abspath(config.path("l"))
        self.run_root = os.path.abspath(config.run_root)
        # Each OCI runtime keeps its state under <run_root>/<name>; a container is run by the one
        # its config names (empty in records older than that field: runc).
        self.runtimes = {
            name: OciRuntime(name, shutil.which(path) or path, os.path.join(self.run_root, name))
            for name, path in (("runc", config.runc), ("crun", config.crun))
        }
        self._default_runtime: str | None = None
        self._crun_prepared: bool | None = None
        self.seccomp_cache = SeccompCache(os.path.join(self.run_root, "seccomp"))
        self.conmon = Conmon(config.conmon, os.path.join(self.run_root, "s"))
        if network is None:
            from runtime.network import NetworkManager

            network = NetworkManager(config, self)
        self.network: NetworkHook = network
        self.volumes = volumes if volumes is not None else VolumeStore(config.root)
        self._boot_id = _boot_id()
        self._last_stats: dict[str, tuple[float, dict]] = {}
        # list()'s parsed records: id -> ((st_ino, st_mtime_ns, st_size) of config.json, record).
        self._listed: dict[str, tuple[tuple[int, int, int], ContainerRecord]] = {}
        self._removed_pruned = 0.0  # when _leave_exit_code last dropped old exit codes
        os.makedirs(self.root, mode=0o700, exist_ok=True)

    #
    # Paths
    #

    def _dir(self, cid: str) -> str:
        return os.path.join(self.root, cid)

    def _record_path(self, cid: str) -> str:
        return os.path.join(self.root, cid, "config.json")

    def _removed_path(self, cid: str) -> str:
        """The exit code a removed container left for waiters (see ``remove``)."""
        return os.path.join(self.root, ".removed", cid)

    def _bundle(self, cid: str) -> str:
        return os.path.join(self.root, cid, "bundle")

    def _exit_file(self, cid: str) -> str:
        return os.path.join(self.root, cid, "exits", cid)

    def _persist_dir(self, cid: str) -> str:
        return os.path.join(self.root, cid, "persist")

    def log_path(self, cid: str) -> str:
        """The container's k8s-file log."""
        return os.path.join(self.root, cid, "ctr.log")

    @staticmethod
    def _cuuid(cid: str) -> str:
        return cid[:_CUUID_LENGTH]

    def attach_socket_path(self, id_or_name: str) -> str:
        """The container's attach socket (SOCK_SEQPACKET; see notes/conmon.md §5). It exists while
        the container runs. A path longer than 107 bytes needs the /proc/self/fd trick of §5."""
        return self.conmon.attach_path(self._cuuid(self.get(id_or_name).id))

    #
    # Locks and record I/O
    #

    @contextlib.contextmanager
    def _names_locked(self) -> Iterator[None]:
        fd = os.open(os.path.join(self.root, ".lock"), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _locked(self, cid: str) -> Iterator[ContainerRecord]:
        """Hold the container's lock; yield its record read under the lock (NotFound if gone).

        The lock file is opened read-only: closing it makes no inotify IN_CLOSE_WRITE, so waiters
        watching the directory are not woken by every lock.
        """
        try:
            fd = os.open(os.path.join(self._dir(cid), "lock"), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"No such container: {cid}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            record = self._read(cid)
            if record is None:  # Removed while we waited for the lock.
                raise NotFound(f"No such container: {cid}")
            yield record
        finally:
            os.close(fd)

    def _read(self, cid: str) -> ContainerRecord | None:
        try:
            with open(self._record_path(cid), "rb") as f:
                return ContainerRecord.from_json(json.load(f))
        except (FileNotFoundError, NotADirectoryError):
            return None

    # list() keeps a parsed record only when its config.json was written over a second ago: see _read_listed.
    LISTED_MIN_AGE_NS = 1_000_000_000

    def _read_listed(self, cid: str, *, shared: bool = False) -> ContainerRecord | None:
        """``_read(cid)`` for list(): a record parsed before is given again (a copy) while its
        config.json keeps the same inode, mtime and size.

        Every record write is a rename of a new file (``_write``): a new inode and a new mtime. A file
        is only remembered when its mtime is over LISTED_MIN_AGE_NS old, so a later write, which gets a
        later mtime, can never match the remembered one even if its inode number and size were
        reused within one tick of the file system's clock. An exit is not in the record until
        ``_sync`` writes it: list() still checks every CREATED or active record's exit file.

        A hit costs one stat. A miss reads the file through the descriptor it fstat()s, so what is
        remembered is exactly what that stamp names. ``shared``: the remembered record itself, not a
        copy, for a caller that only reads it.
        """
        path = self._record_path(cid)
        known = self._listed.get(cid)
        if known is not None:
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                self._listed.pop(cid, None)
                return None
            if known[0] == (st.st_ino, st.st_mtime_ns, st.st_size):
                return known[1] if shared else _copy_record(known[1])
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            self._listed.pop(cid, None)
            return None
        try:
            st = os.fstat(fd)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            with open(fd, "rb", closefd=False) as f:
                record = ContainerRecord.from_json(json.load(f))
        finally:
            os.close(fd)
        if time.time_ns() - st.st_mtime_ns > self.LISTED_MIN_AGE_NS:
            self._listed[cid] = (stamp, record)
            return record if shared else _copy_record(record)
        self._listed.pop(cid, None)
        return record

    def _write(self, record: ContainerRecord, *, durable: bool = False) -> None:
        """Replace the record atomically. ``durable`` also fsyncs (the first write at create):
        later updates rely on ext4's flush of a file renamed over another, and sync() repairs
        a state lost in a crash anyway."""
        path = self._record_path(record.id)
        tmp = f"{path}.tmp-{secrets.token_hex(4)}"
        data = json.dumps(record.to_json(), indent=1).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def _ids(self) -> list[str]:
        try:
            return [n for n in os.listdir(self.root) if _ID_RE.match(n)]
        except FileNotFoundError:
            return []

    #
    # Lookup
    #

    def get(self, id_or_name: str, *, sync: bool = True) -> ContainerRecord:
        """The container named by full id, name (``x`` or ``/x``) or unique id prefix.

        Docker's order: a full id, then a name, then a prefix. NotFound: ``No such container: x``;
        a prefix matching several: InvalidArgument. The record is synced first (an exit nobody
        recorded yet is recorded now), unless ``sync`` is False: then it is the record as it is
        on disk, for a caller that wants to see the exit itself (``has_exited``, then ``sync``).
        """
        record = self._lookup(id_or_name)
        return self._synced(record) if sync else record

    def _lookup(self, id_or_name: str) -> ContainerRecord:
        if not isinstance(id_or_name, str) or not id_or_name.strip():
            raise NotFound("No such container: ")
        key = id_or_name.strip()
        if _ID_RE.match(key):
            record = self._read(key)
            if record is not None:
                return record
        name = key.lstrip("/")
        ids = self._ids()
        records = [r for r in (self._read_listed(i) for i in ids) if r is not None]
        self._forget_listed(ids)
        for record in records:
            if record.name == name:
                return record
        if re.fullmatch(r"[0-9a-f]+", key):
            matches = [r for r in records if r.id.startswith(key)]
            if len(matches) > 1:
                raise InvalidArgument(f"multiple IDs found with provided prefix: {key}")
            if matches:
                return matches[0]
        raise NotFound(f"No such container: {key}")

    def list(self, all: bool = False, *, shared: bool = False) -> list[ContainerRecord]:
        """The containers, newest first (``docker ps``; ``all`` also those not running), synced.

        ``shared``: records list() remembers are given as they are, not copied (``docker ps``, which
        only reads them): the caller must not change them.
        """
        records = []
        ids = self._ids()
        for cid in ids:
            record = self._read_listed(cid, shared=shared)
            if record is None:
                continue
            record = self._synced(record)
            if all or record.state in ACTIVE_STATES:
                records.append(record)
        self._forget_listed(ids)
        records.sort(key=_created_ns, reverse=True)
        return records

    def _forget_listed(self, ids: list[str]) -> None:
        """Drop the remembered records of containers no longer in ``ids`` (all of them)."""
        if len(self._listed) > len(ids):
            present = set(ids)
            for cid in [c for c in list(self._listed) if c not in present]:  # other threads add
                self._listed.pop(cid, None)

    def image_in_use(self, image_id: str) -> str | bool:
        """The id of a container created from the image, or False (for ImageStore.remove's ``in_use``)."""
        for cid in self._ids():
            record = self._read(cid)
            if record is not None and record.image_id == image_id:
                return record.id
        return False

    def volume_users(self, name: str, exclude: str = "") -> list[str]:
        """The ids of the containers that mount the volume ``name`` (VolumeStore's ``in_use``)."""
        users = []
        for cid in self._ids():
            record = self._read(cid)
            if record is not None and record.id != exclude and any(
                    m.kind == "volume" and m.source == name for m in record.config.mounts):
                users.append(record.id)
        return users

    #
    # Create
    #

    def create(self, config: ContainerConfig) -> ContainerRecord:
        """``docker create``: a new container in state CONFIGURED (Docker's "created").

        1. Check the options (name, capabilities, mounts, limits, network mode, restart policy).
        2. Resolve the image and merge its config with the options as Docker does (see
           ``merge_image_config``): "No command specified" when there is nothing to run.
        3. Allocate the id and, under the names lock, the name (given, or a random
           adjective_surname); make the container's directories and its volumes (named ones if
           missing, anonymous ones with 64-hex names), write the record.
        """
        name = validate_name(config.name) if config.name else ""
        image = self.images.resolve(config.image)
        merged = merge_image_config(config, image.config.get("config") or {})
        self._check_options(merged)
        merged.runtime = self._check_runtime(config.runtime or self.default_runtime())
        argv = list(merged.entrypoint or []) + list(merged.cmd or [])
        if not argv:
            raise InvalidArgument("No command specified")
        cid = secrets.token_hex(32)
        if not merged.hostname:
            merged.hostname = socket.gethostname() if merged.network_mode == "host" else cid[:12]
        for mount in merged.mounts:
            if mount.kind == "volume" and not mount.source:
                mount.source, mount.anonymous = secrets.token_hex(32), True
        record = ContainerRecord(
            id=cid, name=name, image_id=str(image.id), image_ref=config.image, config=merged,
            created=format_time_ns(time.time_ns()), path=argv[0], args=argv[1:],
        )
        volumes = [m for m in merged.mounts if m.kind == "volume"]
        # The volumes lock keeps a concurrent ``volume rm``/``prune`` from removing a volume
        # between its creation here and the record that makes it "in use" (runtime.volumes).
        with self.volumes.locked() if volumes else contextlib.nullcontext(), self._names_locked():
            # The names of every other container: list()'s parsed records (a stat each) when unchanged.
            ids = self._ids()
            records = [r for r in (self._read_listed(i, shared=True) for i in ids) if r is not None]
            self._forget_listed(ids)
            taken = {r.name: r.id for r in records}
            if name and name in taken:
                raise AlreadyExists(
                    f'Conflict. The container name "/{name}" is already in use by container "{taken[name]}". '
                    "You have to remove (or rename) that container to be able to reuse that name."
                )
            record.name = name or _random_name(taken)
            directory = self._dir(cid)
            os.makedirs(directory, mode=0o700)
            try:
                for sub in ("bundle", "exits", "persist"):
                    os.mkdir(os.path.join(directory, sub), 0o700)
                # As docker create does: the volumes exist from now on (filled from the image at
                # the first start, when the rootfs is mounted).
                for mount in volumes:
                    self.volumes.ensure(mount.source, {ANONYMOUS_LABEL: ""} if mount.anonymous else None)
                self._write(record, durable=True)
            except BaseException:
                shutil.rmtree(directory, ignore_errors=True)
                raise
        return record

    #
    # OCI runtimes
    #

    def runtime_of(self, record: ContainerRecord) -> OciRuntime:
        """The OCI runtime that runs ``record``'s container."""
        return self.runtimes.get(record.config.runtime or "runc") or self.runtimes["runc"]

    def default_runtime(self, *, prepare: bool = True) -> str:
        """The runtime of a container created without ``--runtime``: ``config.default_runtime``;
        with "auto", crun when it is installed and can run on this host (see ``crun_usable``;
        ``prepare=False`` for an answer that changes nothing on the host), else runc. crun's
        ``create`` takes ~6 ms here where runc's takes ~30 (Docker's seccomp profile, compiled
        once: SeccompCache): the slowest step of ``docker run``."""
        if self._default_runtime is not None:
            return self._default_runtime
        wanted = self.config.default_runtime
        if wanted == "auto":
            wanted = "crun" if self.crun_usable(prepare=prepare) else "runc"
        if prepare or wanted == "crun":
            self._default_runtime = wanted
        return wanted

    def crun_usable(self, *, prepare: bool = False) -> bool:
        """True if crun is installed and can create containers under this host's cgroups. On a
        hybrid host whose unified hierarchy offers controllers (crun refuses those), ``prepare``
        binds them as v1 hierarchies first (``cgroups.bind_v1_hierarchies``), and on a v1 host
        with an empty, unmounted ``unified`` directory (which crun takes for a hierarchy) mounts
        cgroup2 there first; once per process: its answer is kept."""
        if self._crun_prepared is not None:
            return self._crun_prepared
        if not shutil.which(self.runtimes["crun"].path):
            return False
        if not prepare:
            return not cgroups.stray_unified_dir() and not cgroups.hybrid_v2_controllers()
        usable = not cgroups.stray_unified_dir() or cgroups.mount_unified()
        offered = cgroups.hybrid_v2_controllers()
        if offered:
            offered = cgroups.bind_v1_hierarchies(offered)
        self._crun_prepared = usable and not offered
        return self._crun_prepared

    def _check_runtime(self, name: str) -> str:
        """``name`` if containers can be created with it here; InvalidArgument (Docker's words) if not."""
        if name not in RUNTIMES:
            raise InvalidArgument(f"Unknown runtime specified {name}")
        if name == "crun" and not self.crun_usable(prepare=True):
            if not shutil.which(self.runtimes["crun"].path):
                raise InvalidArgument("Unknown runtime specified crun (it is not installed on this host)")
            offered = cgroups.hybrid_v2_controllers()
            raise InvalidArgument("crun cannot run containers under this host's cgroups: " + (
                f"its cgroup2 hierarchy has controllers ({' '.join(offered)}) beside v1" if offered else
                "cgroup2 is not mounted on /sys/fs/cgroup/unified beside v1"))
        return name

    def _check_options(self, config: ContainerConfig) -> None:
        """Refuse options that cannot work, before anything is written (Docker's create errors)."""
        oci_spec.normalise_capabilities(config.cap_add)
        oci_spec.normalise_capabilities(config.cap_drop)
        _resources(config)
        if config.working_dir and not config.working_dir.startswith("/"):
            raise InvalidArgument(
                f"the working directory '{config.working_dir}' is invalid, it needs to be an absolute path")
        policy = config.restart_policy or {}
        if policy.get("Name", "no") not in ("no", "", "always", "unless-stopped", "on-failure"):
            raise InvalidArgument(f"invalid restart policy '{policy.get('Name')}'")
        if config.auto_remove and policy.get("Name", "no") not in ("no", ""):
            raise InvalidArgument("can't create 'AutoRemove' container with restart policy")
        mode = config.network_mode or "bridge"
        if mode == "default":
            config.network_mode = mode = "bridge"
        if mode.startswith("container:"):
            other = self._lookup(mode.partition(":")[2])
            config.network_mode = f"container:{other.id}"
        elif mode not in ("bridge", "none", "host"):
            knows = getattr(self.network, "knows", None)
            if knows is None or not knows(mode):
                raise NotFound(f"network {mode} not found")
        check_endpoint_options(mode, config.network_aliases, config.ipv4_address)
        if config.ipv4_address:
            check = getattr(self.network, "check_address", None)
            if check is not None:
                check(mode, config.ipv4_address)
        seen = set()
        for mount in config.mounts:
            if mount.kind not in ("bind", "volume"):
                raise InvalidArgument(f"mount type {mount.kind!r} is not supported")
            target = oci_spec.clean_destination(mount.target)
            if target in seen:
                raise InvalidArgument(f"Duplicate mount point: {target}")
            seen.add(target)
            if mount.kind == "bind" and not os.path.isabs(mount.source):
                raise InvalidArgument(f'invalid mount config for type "bind": invalid mount path: '
                                      f"'{mount.source}' mount path must be absolute")
            if mount.kind == "volume" and mount.source:
                validate_volume_name(mount.source)
        for key, value in _security_options(config.security_opt).items():
            if key not in ("no-new-privileges", "seccomp", "label", "apparmor"):
                raise InvalidArgument(f"invalid --security-opt: {key!r}")
            if key == "seccomp" and value != "unconfined":
                raise InvalidArgument("only seccomp=unconfined is supported (custom profiles are not)")
        if config.stop_signal:
            parse_signal(config.stop_signal)

    #
    # Sync (libpod's syncContainer)
    #

    def sync(self, id_or_name: str) -> ContainerRecord:
        """Update the record from what conmon and runc left, and return it (see ``_sync``)."""
        record = self._lookup(id_or_name)
        with self._locked(record.id) as record:
            return self._sync(record)

    def has_exited(self, id_or_name: str) -> bool:
        """True if the record says the container runs but its process has ended (sync() will
        record the exit). Cheap: a stat and a read of /proc, no lock, no process started."""
        record = self._lookup(id_or_name)
        return self._stale(record)

    def _stale(self, record: ContainerRecord) -> bool:
        if record.state not in (S.CREATED, *ACTIVE_STATES):
            return False
        if record.boot_id and record.boot_id != self._boot_id:
            return True
        if read_exit_file(self._exit_file(record.id)) is not None:
            return True
        if conmon_alive(record.conmon_pid, record.id):
            return False
        # The monitor is gone without an exit file: lost, unless the process itself still runs.
        return not self._process_alive(record)

    def _process_alive(self, record: ContainerRecord) -> bool:
        return record.pid > 0 and process_start_time(record.pid) == record.pid_start

    def _synced(self, record: ContainerRecord) -> ContainerRecord:
        """``record``, synced under the lock if it is stale (the common case takes no lock)."""
        if not self._stale(record):
            return record
        try:
            with self._locked(record.id) as locked:
                return self._sync(locked)
        except NotFound:
            return record

    def _sync(self, record: ContainerRecord) -> ContainerRecord:
        """With the lock held: if the container's process has ended, record how (``_finish``).

        - another boot's container: EXITED, with its exit file's code if conmon wrote one, else 255;
        - an exit file: EXITED with its code (and OOMKilled from conmon's ``oom`` file);
        - conmon gone without an exit file and the process gone too: EXITED with 255;
        - conmon gone but the process alive (conmon was SIGKILLed): still running, unmonitored;
        - REMOVING seen with the lock held: the process removing it died half-way, DEAD.
        """
        if record.state is S.REMOVING:
            record.state = S.DEAD
            record.error = record.error or "removal was interrupted"
            self._write(record)
            return record
        if not self._stale(record):
            return record
        if record.boot_id and record.boot_id != self._boot_id:
            self._finish(record, error="the host rebooted while the container ran")
        else:
            self._finish(record)
        return record

    def _finish(self, record: ContainerRecord, *, error: str = "") -> None:
        """Record the end of the container's run and release what the run held.

        The exit code is conmon's (exits/<id>, else persist/exit); with neither, 255 and an error.
        Then ``runc delete``, unmount the rootfs, release the network, remove the socket symlink.
        """
        code = read_exit_file(self._exit_file(record.id))
        if code is None:
            code = read_exit_file(os.path.join(self._persist_dir(record.id), "exit"))
        finished_ns = time.time_ns()
        if code is None:
            code = LOST_EXIT_CODE
            error = error or "the container's monitor (conmon) died; its exit status is unknown"
        else:
            error = ""
            with contextlib.suppress(OSError):
                finished_ns = os.stat(self._exit_file(record.id)).st_mtime_ns
            # File times come from the kernel's coarse clock (a tick behind): a process that ends
            # within a tick of its start would seem to finish before it started.
            if record.started_at and record.started_at != ZERO_TIME:
                with contextlib.suppress(ValueError):
                    finished_ns = max(finished_ns, parse_time_ns(record.started_at))
        record.exit_code = _docker_exit_code(code)
        record.oom_killed = os.path.exists(os.path.join(self._persist_dir(record.id), "oom"))
        record.error = error
        record.finished_at = format_time_ns(finished_ns)
        record.state = S.EXITED
        self._release(record)
        record.pid, record.pid_start, record.conmon_pid = 0, None, 0
        self._write(record)

    def _release(self, record: ContainerRecord) -> None:
        """Undo what a run set up (each step tolerates having been done already)."""
        errors = []
        oci = self.runtime_of(record)
        if oci.exists(record.id) and not self._drop_ended_runc_state(record):
            try:
                oci.delete(record.id, force=True)
            except CommandError as exc:
                errors.append(str(exc))
        try:
            unmount_rootfs(self._dir(record.id))
        except EngineError as exc:
            errors.append(str(exc))
        try:
            self.network.release(record)
        except EngineError as exc:
            errors.append(str(exc))
        self.conmon.remove_socket_link(self._cuuid(record.id))
        # runc delete removed the leaf; this catches one left by a crash. The shared /berth parent
        # stays (as Docker's /docker does): removing it could race a concurrent runc create.
        cgroups.remove_dirs(self._cgroup_path(record.id), parents=False)
        if errors:
            record.error = "; ".join(filter(None, [record.error, *errors]))

    def _drop_ended_runc_state(self, record: ContainerRecord) -> bool:
        """``runc delete`` of a container whose processes are all gone, without running runc
        (about 6 ms, on the path of every ``docker run --rm``): remove its cgroups, then runc's
        state dir. The container always has its own pid namespace, so once its first process is
        gone (reaped by conmon) so is every other. False, with nothing removed but empty cgroups,
        when that process may live or a cgroup is not empty: then runc deletes it, forcibly."""
        if not record.pid or record.pid_start is None:
            return False
        if process_start_time(record.pid) == record.pid_start:
            return False  # still there (a created container's init waits for its start)
        if not cgroups.remove_dirs(self._cgroup_path(record.id), parents=False):
            return False  # a process is left in one
        oci = self.runtime_of(record)
        shutil.rmtree(os.path.join(oci.root, record.id), ignore_errors=True)
        return not oci.exists(record.id)

    def reconcile(self) -> list[ContainerRecord]:
        """Sync every container (at worker start, or periodically); return the records.

        Also deletes runc containers under our runc root whose record is gone (a remove that
        crashed half-way). Restart policies are the caller's.
        """
        records = []
        for cid in self._ids():
            try:
                record = self.sync(cid)
            except NotFound:
                continue
            if record.restarting:  # a restart the last worker did not finish: it will not now
                record = self._clear_restarting(cid) or record
            records.append(record)
        known = {r.id for r in records}
        for oci in self.runtimes.values():
            try:
                entries = oci.list() if shutil.which(oci.path) else []
            except (CommandError, ValueError):
                entries = []
            for entry in entries:
                cid = entry.get("id", "")
                if cid and cid not in known and not os.path.isdir(self._dir(cid)):
                    with contextlib.suppress(CommandError):
                        oci.delete(cid, force=True)
                    self.conmon.remove_socket_link(self._cuuid(cid))
                    cgroups.remove_dirs(self._cgroup_path(cid), parents=False)
        self._delete_aside()  # what removals that crashed half-way moved aside
        records.sort(key=_created_ns, reverse=True)
        return records

    #
    # Init and start
    #

    def init(self, id_or_name: str) -> ContainerRecord:
        """Create the container in runc without starting it: CONFIGURED or EXITED -> CREATED.

        Its attach socket then exists, so a client can attach before ``start`` (``docker run -a``)
        and miss no output.
        """
        record = self._lookup(id_or_name)
        with self._locked(record.id) as record:
            self._sync(record)
            check_state("init", record.state, record.id)
            self._init(record)
            self._write(record)
            return record

    def start(self, id_or_name: str) -> ContainerRecord:
        """``docker start``: CONFIGURED, CREATED or EXITED -> RUNNING.

        1. Lock, sync, check the state.
        2. Unless already CREATED, ``_init``: mount the rootfs, write /etc files and the spec,
           conmon runs ``runc create`` (one conmon process, two socketpairs, no polling).
        3. ``runc start``; the record becomes RUNNING with its pid and start time.

        The path is benchmarked against ``docker run``: two processes are started (conmon and
        ``runc start``), nothing sleeps, and the record is written once. On failure the state is
        left as it was, with Docker's exit code (127 command not found, 126 not executable, 128
        otherwise) and the error; the error is raised (InvalidArgument for 126/127).
        """
        record = self._lookup(id_or_name)
        with self._locked(record.id) as record:
            self._sync(record)
            check_state("start", record.state, record.id)
            return self._start(record)

    def restart_by_policy(self, id_or_name: str, finished_at: str | None = None) -> ContainerRecord:
        """A restart policy's restart: EXITED -> RUNNING, counted in RestartCount (Docker counts
        only these). The caller decides when (policy, back-off); a container that is no longer
        EXITED, or was stopped by a user since, is left as it is; so is one whose exit is not the
        one the restart was for (``finished_at``: it was started and ended again meanwhile, and
        that exit's own restart comes)."""
        record = self._lookup(id_or_name)
        with self._locked(record.id) as record:
            self._sync(record)
            if record.state is not S.EXITED or record.manually_stopped:
                return record
            if finished_at is not None and record.finished_at != finished_at:
                return record
            record.restart_count += 1
            return self._start(record)

    def _start(self, record: ContainerRecord) -> ContainerRecord:
        """Steps 2 and 3 of ``start``, with the lock held."""
        if record.state is not S.CREATED:
            self._init(record)
        # Taken before ``runc start``: the process may be done before runc returns.
        started_ns = time.time_ns()
        try:
            self.runtime_of(record).start(record.id)
        except CommandError as exc:
            self._fail_start(record, S.CONFIGURED if record.started_at == ZERO_TIME else S.EXITED, exc)
        record.state = S.RUNNING
        record.started_at = format_time_ns(started_ns)
        record.manually_stopped = False
        record.restarting = False
        self._write(record)
        return record

    def _init(self, record: ContainerRecord) -> None:
        """Make the container exist in runc (state CREATED). On failure clean up and raise."""
        previous = record.state
        cid = record.id
        oci = self.runtime_of(record)
        spec = None
        self._clear_run_files(record)
        try:
            if oci.name == "crun":
                self.crun_usable(prepare=True)  # the cgroup binding crun needs is gone after a reboot
            image = self.images.get(record.image_id)
            lowers = [self.layers.get(c).path for c in image.chain_ids]
            rootfs = mount_rootfs(self._dir(cid), lowers, links_dir=self.links_dir)
            netns = self.network.prepare(record)
            spec = self._build_spec(record, rootfs, netns, image_arch=image.architecture)
            replace_json(os.path.join(self._bundle(cid), "config.json"), spec)
            tty = record.config.tty
            pid = self.conmon.create(
                cid, oci, cuuid=self._cuuid(cid), bundle=self._bundle(cid), log_path=self.log_path(cid),
                exit_dir=os.path.dirname(self._exit_file(cid)), persist_dir=self._persist_dir(cid),
                terminal=tty, stdin=record.config.open_stdin, leave_stdin_open=not record.config.stdin_once,
            )
        except (EngineError, OSError) as exc:
            if spec is not None and SeccompCache.ANNOTATION in spec["annotations"]:
                self.seccomp_cache.drop(spec["linux"]["seccomp"], oci)  # compiled afresh next time
            self._fail_start(record, previous, exc)
        except BaseException:
            self._release(record)
            raise
        seccomp = spec["linux"].get("seccomp")
        if seccomp is not None and oci.name == "crun" and SeccompCache.ANNOTATION not in spec["annotations"]:
            self.seccomp_cache.put(seccomp, oci, cid)
        record.pid = pid
        record.pid_start = process_start_time(pid)
        record.conmon_pid = _read_int(os.path.join(self._bundle(cid), "conmon.pid"))
        record.boot_id = self._boot_id
        record.state = S.CREATED
        record.error = ""

    def _clear_run_files(self, record: ContainerRecord) -> None:
        """Remove what the previous run left: runc's state, exit files, the socket symlink."""
        oci = self.runtime_of(record)
        if oci.exists(record.id):
            oci.delete(record.id, force=True)
        persist, bundle = self._persist_dir(record.id), self._bundle(record.id)
        for path in (self._exit_file(record.id), os.path.join(persist, "exit"), os.path.join(persist, "oom"),
                     os.path.join(bundle, "oom")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self.conmon.remove_socket_link(self._cuuid(record.id))
        for sub in ("exits", "persist", "bundle"):
            os.makedirs(os.path.join(self._dir(record.id), sub), mode=0o700, exist_ok=True)

    def _fail_start(self, record: ContainerRecord, state: ContainerState, exc: Exception):
        """Undo a failed init/start, record Docker's exit code and message, and raise."""
        message = str(exc)
        self._release(record)
        record.pid, record.pid_start, record.conmon_pid = 0, None, 0
        lowered = message.lower()
        if "executable file not found" in lowered or "no such file or directory" in lowered:
            code, error_class = 127, InvalidArgument
        elif "permission denied" in lowered:
            code, error_class = 126, InvalidArgument
        elif isinstance(exc, (InvalidArgument, NotFound)):
            code, error_class = 128, type(exc)
        else:
            code, error_class = 128, CommandError
        record.exit_code = code
        record.error = message
        record.state = state
        self._write(record)
        raise error_class(message) from exc

    def _cgroup_path(self, cid: str) -> str:
        return f"/berth/{cid}"

    #
    # The spec
    #

    def _build_spec(self, record: ContainerRecord, rootfs: str, netns: str | None, image_arch: str = "") -> dict:
        """The OCI spec of a run: the image's and the user's options through runtime.spec."""
        config = record.config
        cid = record.id
        caps = oci_spec.effective_capabilities(config.cap_add, config.cap_drop, config.privileged)
        security = _security_options(config.security_opt)
        oci = self.runtime_of(record)
        seccomp = None
        if not config.privileged and security.get("seccomp") != "unconfined":
            oci_spec.check_seccomp_support(oci.features(), oci.path)
            seccomp = oci_spec.default_seccomp_profile(caps, image_arch=image_arch,
                                                       native_only=self.config.seccomp_native_only)
        etc = self._write_etc_files(record, host_network=netns == "host")
        opts = [
            oci_spec.with_root(rootfs),
            oci_spec.with_readonly_rootfs(config.read_only),
            oci_spec.with_process_args([record.path, *record.args]),
            oci_spec.with_env([f"HOSTNAME={config.hostname}"]),
            oci_spec.with_env(getattr(self.network, "env", lambda r: [])(record)),
            oci_spec.with_env(config.env),
            oci_spec.with_tty(config.tty),
            oci_spec.with_cwd(config.working_dir or "/"),
            oci_spec.with_user(rootfs, config.user),
            oci_spec.with_hostname(config.hostname),
            oci_spec.with_capabilities(config.cap_add, config.cap_drop, config.privileged),
            oci_spec.with_no_new_privileges(security.get("no-new-privileges", "true") != "false"),
            oci_spec.with_seccomp(seccomp),
            oci_spec.with_rlimits(),
            _resources(config),
            oci_spec.with_cgroups_path(self._cgroup_path(cid)),
            oci_spec.with_namespaces(network=netns),
            oci_spec.with_etc_files(hosts=etc["hosts"], hostname=etc["hostname"],
                                    resolv_conf=etc["resolv.conf"], read_only=config.read_only),
            oci_spec.with_mounts(self._mount_sources(config, rootfs, record.started_at == ZERO_TIME)),
        ]
        if config.privileged:
            opts += [oci_spec.with_masked_paths(()), oci_spec.with_readonly_paths(()),
                     oci_spec.with_privileged_devices()]
        spec = oci_spec.generate(*opts)
        spec["annotations"] = {"io.berth.container.name": record.name, "io.berth.image": record.image_id}
        if seccomp is not None and oci.name == "crun":
            # crun loads a filter it compiled before instead of compiling the same profile again
            # (~10 ms of every create with three ABIs): see SeccompCache.
            bpf = self.seccomp_cache.get(seccomp, oci)
            if bpf is not None:
                spec["annotations"][SeccompCache.ANNOTATION] = bpf
        return spec

    def _write_etc_files(self, record: ContainerRecord, *, host_network: bool) -> dict[str, str]:
        """Write the container's hosts, hostname and resolv.conf (new each start, as Docker does)."""
        config = record.config
        directory = self._dir(record.id)
        if host_network:
            base = (_read_host_file("/etc/hosts") or b"").decode("utf-8", "replace") or None
            hosts = oci_spec.hosts_file(extra_hosts=config.extra_hosts, base=base)
        else:
            hosts = getattr(self.network, "hosts", lambda r: None)(record)
        if hosts is None and not host_network:
            address = getattr(self.network, "address", lambda r: None)(record)
            hosts = oci_spec.hosts_file(config.hostname, ip=address, extra_hosts=config.extra_hosts,
                                        domainname=config.domainname)
        files = {"hosts": hosts, "hostname": config.hostname + "\n",
                 "resolv.conf": self.resolv_conf_text(record, host_network=host_network)}
        paths = {}
        for name, text in files.items():
            path = os.path.join(directory, name)
            _write_text(path, text)
            paths[name] = path
        self.remember_etc_file(record.id, "resolv.conf", files["resolv.conf"])
        return paths

    def remember_etc_file(self, cid: str, name: str, text: str) -> None:
        """Keep the digest of an /etc file as Berth wrote it (``etc_file_is_ours``)."""
        _write_text(os.path.join(self._dir(cid), f".{name}.sha256"), hashlib.sha256(text.encode()).hexdigest())

    def etc_file_is_ours(self, cid: str, name: str, content: str) -> bool:
        """Whether an /etc file still has what Berth last wrote (not edited inside the container),
        so that a rewrite (network connect, disconnect) may replace it; Docker keeps such a digest."""
        try:
            with open(os.path.join(self._dir(cid), f".{name}.sha256")) as f:
                expected = f.read().strip()
        except FileNotFoundError:
            return True  # written before digests were kept
        return hashlib.sha256(content.encode()).hexdigest() == expected

    def resolv_conf_text(self, record: ContainerRecord, *, host_network: bool = False) -> str:
        """The container's /etc/resolv.conf: the host's, its --dns options, or the embedded DNS of
        its user-defined network (runtime/network/dns.py)."""
        config = record.config
        embedded = None if host_network else getattr(self.network, "nameserver", lambda r: None)(record)
        return oci_spec.resolv_conf(_read_host_file("/etc/resolv.conf"), dns=config.dns,
                                    dns_search=config.dns_search, dns_options=config.dns_options,
                                    host_network=host_network, embedded=embedded)

    def _mount_sources(self, config: ContainerConfig, rootfs: str, first_run: bool) -> list[dict]:
        """The user's mounts as runtime.spec takes them: binds checked, volumes resolved to paths
        (created on first use, and filled from the image at the first run, when empty)."""
        result = []
        for mount in config.mounts:
            if mount.kind == "volume":
                if mount.anonymous:
                    source = self.volumes.ensure(mount.source, {ANONYMOUS_LABEL: ""})
                else:
                    source = self.volumes.mountpoint(mount.source)
                if first_run:
                    # As Docker does for a new volume: it gets what the image has at the target.
                    self.volumes.populate_from_image(source, rootfs, mount.target)
            else:
                source = mount.source
                if not os.path.exists(source):
                    # As ``docker run -v /host/dir:/dir`` does: a missing host directory is created.
                    os.makedirs(source, mode=0o755, exist_ok=True)
            result.append({"source": source, "destination": mount.target, "read_only": mount.read_only})
        return result


    #
    # Stop, kill, restart, pause
    #

    def stop(self, id_or_name: str, timeout: int | None = None, *, restarting: bool = False) -> ContainerRecord:
        """``docker stop``: RUNNING, PAUSED or CREATED -> STOPPING -> EXITED.

        1. Under the lock: STOPPING, then the stop signal (the option's, else the image's
           StopSignal, else SIGTERM; SIGKILL for a container only created in runc). A paused
           container is thawed after the signal, so that it can act on it.
        2. Without the lock (so that ``kill`` or ``inspect`` are not kept waiting): wait up to
           ``timeout`` seconds (default: the container's stop_timeout, else 10; negative: for
           ever) for conmon's exit file.
        3. Under the lock: sync, which records the exit; if the process still runs, SIGKILL and
           wait again.

        A container that is not running is left as it is (Docker's 304 Not Modified).
        """
        record = self._lookup(id_or_name)
        with self._locked(record.id) as record:
            self._sync(record)
            if record.state not in ACCEPTS_STOP:
                return record
            if timeout is None:
                timeout = record.config.stop_timeout
                if timeout is None:
                    timeout = DEFAULT_STOP_TIMEOUT
            was_paused, was_created = record.state is S.PAUSED, record.state is S.CREATED
            record.state = S.STOPPING
            record.manually_stopped = True
            record.restarting = restarting
            self._write(record)
            if was_created or timeout == 0 or record.pid == 0:
                sig = "KILL"
            else:
                sig = str(parse_signal(record.config.stop_signal or "SIGTERM"))
            self._signal(record, sig)
            if was_paused:
                self._thaw(record)
        if sig != "KILL":
            self._wait_exit(record, None if timeout < 0 else float(timeout))
        with self._locked(record.id) as record:
            self._sync(record)
            if record.state not in ACTIVE_STATES:
                return record
            self._signal(record, "KILL")
            if not self._wait_exit(record, KILL_TIMEOUT):
                raise CommandError(f"container {record.id} did not exit {KILL_TIMEOUT:g}s after SIGKILL")
            self._finish(record)
            return record

    def kill(self, id_or_name: str, signal: str | int = "KILL") -> ContainerRecord:
        """``docker kill -s SIGNAL``: send a signal to the container's main process.

        Accepts ``KILL``, ``SIGKILL``, ``9``. With SIGKILL, returns once the container is EXITED;
        other signals return at once (the process may ignore them). Not running: InvalidState.
        """
        number = parse_signal(signal)
        record = self._lookup(id_or_name)
        with self._locked(record.id) as record:
            self._sync(record)
            check_state("kill", record.state, record.id)
            record.manually_stopped = True
            self._signal(record, str(number))
            if number == signals.SIGKILL:
                if record.state is S.PAUSED:
                    self._thaw(record)
                if self._wait_exit(record, KILL_TIMEOUT):
                    self._finish(record)
                    return record
            self._write(record)
            return record

    def restart(self, id_or_name: str, timeout: int | None = None) -> ContainerRecord:
        """``docker restart``: stop (if running), then start. RestartCount counts only the restarts
        of a restart policy (the caller's), as in Docker."""
        cid = self._lookup(id_or_name).id
        try:
            record = self.stop(cid, timeout, restarting=True)
            return self.start(record.id)
        except BaseException:
            self._clear_restarting(cid)  # it stays as it is: its exit is an ordinary one now
            raise

    def _clear_restarting(self, cid: str) -> ContainerRecord | None:
        with contextlib.suppress(NotFound), self._locked(cid) as record:
            if record.restarting:
                record.restarting = False
                self._write(record)
            return record
        return None

    def pause(self, id_or_name: str) -> ContainerRecord:
        """``docker pause``: RUNNING -> PAUSED (the cgroup freezer stops every process)."""
        record = self._lookup(id_or_name)
        with self._locked(record.id) as record:
            self._sync(record)
            check_state("pause", record.state, record.id)
            self.runtime_of(record).pause(record.id)
            record.state = S.PAUSED
            self._write(record)
            return record

    def unpause(self, id_or_name: str) -> ContainerRecord:
        """``docker unpause``: PAUSED -> RUNNING."""
        record = self._lookup(id_or_name)
        with self._locked(record.id) as record:
            self._sync(record)
            check_state("unpause", record.state, record.id)
            self.runtime_of(record).resume(record.id)
            record.state = S.RUNNING
            self._write(record)
            return record

    def _signal(self, record: ContainerRecord, sig: str) -> None:
        if record.pid and not self.runtime_of(record).exists(record.id):
            # Another boot's or a half-deleted container: signal the process if it is ours.
            if self._process_alive(record):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(record.pid, int(sig) if sig.isdigit() else parse_signal(sig))
            return
        try:
            self.runtime_of(record).kill(record.id, sig)
        except (CommandError, NotFound):
            # The process may have exited in the meantime ("container not running").
            pass

    def _thaw(self, record: ContainerRecord) -> None:
        with contextlib.suppress(CommandError, NotFound):
            self.runtime_of(record).resume(record.id)

    def _wait_exit(self, record: ContainerRecord, timeout: float | None) -> bool:
        """Wait for the exit file, or the end of the monitor (or of the process, if the monitor
        already died). True when the run is over."""
        if conmon_alive(record.conmon_pid, record.id):
            watch = [record.conmon_pid]
        elif self._process_alive(record):
            watch = [record.pid]
        else:
            return True
        return wait_for_exit(self._exit_file(record.id), watch_pids=watch, timeout=timeout) and (
            read_exit_file(self._exit_file(record.id)) is not None
            or not (conmon_alive(record.conmon_pid, record.id) or self._process_alive(record))
        )

    #
    # Wait
    #

    def wait(self, id_or_name: str, timeout: float | None = None, condition: str = "not-running", *,
             sync: bool = True) -> int:
        """``docker wait``: block until the container is not running; return its exit code.

        ``condition``: "not-running" (returns at once for a container that does not run),
        "next-exit" (waits for the end of the next run, even if not started yet) or "removed"
        (waits until the container is gone; its exit code as the removal left it, else the last seen).
        Raises TimeoutError after ``timeout`` seconds. Blocks on inotify (the exit file, the
        record), waking at least once a second to notice a monitor that died. ``sync=False``: an
        ended run's code is taken from conmon's exit file without recording the exit (a process
        beside the one that records it, which it would race: the web server's ``docker wait``).
        A waiter for the removal never syncs.
        """
        if condition not in ("not-running", "next-exit", "removed"):
            raise InvalidArgument(f"invalid condition: {condition!r}")
        record = self.get(id_or_name)
        cid = record.id
        deadline = None if timeout is None else time.monotonic() + timeout
        first_finish = record.finished_at
        last_code = record.exit_code
        directory = self._dir(cid)
        # Record updates are renames into the directory, exit files are written and closed.
        # The directory's own move or deletion: its removal (remove() moves it aside first).
        watched = [(directory, IN_MOVED_TO | IN_CLOSE_WRITE | IN_MOVE_SELF | IN_DELETE_SELF),
                   os.path.dirname(self._exit_file(cid))]
        with FileWatch(watched, IN_MOVED_TO | IN_CLOSE_WRITE) as watch:
            while True:
                current = self._read(cid)
                if current is None:
                    if condition == "removed":
                        code = self._removed_exit_code(cid)
                        return last_code if code is None else code
                    raise NotFound(f"No such container: {cid}")
                # An ended run's code as conmon wrote it. A waiter for the removal (or with
                # sync=False) only watches: syncing the exit here (unmount, cgroups) would race the
                # worker's exit watcher, which wakes on the same file, records it and (--rm)
                # removes the container.
                code = None
                if (condition == "removed" or not sync) and current.state in (S.CREATED, *ACTIVE_STATES):
                    code = read_exit_file(self._exit_file(cid))
                    code = None if code is None else _docker_exit_code(code)
                if condition == "removed":
                    last_code = current.exit_code if code is None else code
                elif code is not None:
                    return code  # it ended (a next exit too: the record said it was on)
                else:
                    current = self._synced(current)  # a monitor gone without a word: sync
                    last_code = current.exit_code
                if current.state not in (S.CREATED, *ACTIVE_STATES):
                    if condition == "not-running":
                        return current.exit_code
                    if condition == "next-exit" and current.finished_at != first_finish:
                        return current.exit_code
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"container {cid} still running after {timeout:g}s")
                watch.wait(1.0 if remaining is None else min(1.0, remaining))

    #
    # Remove and rename
    #

    def remove(self, id_or_name: str, force: bool = False, volumes: bool = False,
               when_gone: Callable[[], None] | None = None) -> None:
        """``docker rm``: any state but REMOVING -> (gone). A running or paused container needs
        ``force`` (it is killed first). ``volumes`` also removes its anonymous volumes.

        1. REMOVING is written first, so a crash half-way leaves a record a forced remove retries.
        2. ``runc delete --force``, unmount, network release, the socket symlinks (the
           container's and its exec sessions'), the cgroup dirs, then the container's directory:
           moved aside (the container is gone then, and its waiters are answered), then deleted.
        A step that fails leaves the container DEAD with the error, and raises. ``when_gone`` is
        called once the container is gone, before its files are deleted (still under its lock).
        """
        record = self._lookup(id_or_name)
        with self._locked(record.id) as record:
            self._sync(record)
            if record.state in ACTIVE_STATES or record.state is S.CREATED:
                if not force:
                    check_state("remove", record.state, record.id)
                record.manually_stopped = True
                self._signal(record, "KILL")
                if record.state is S.PAUSED:
                    self._thaw(record)
                self._wait_exit(record, KILL_TIMEOUT)
            record.state = S.REMOVING
            self._write(record)
            try:
                self._release(record)
                self._end_exec_sessions(record.id)
                for session in self._exec_sessions(record.id):
                    self.conmon.remove_socket_link(self._cuuid(session))
                if is_mounted(os.path.join(self._dir(record.id), "merged")):
                    raise EngineError(f"the rootfs of {record.id} is still mounted")
                if volumes:
                    self._remove_anonymous_volumes(record)
                self._leave_exit_code(record)
                gone = self._set_aside(record.id)
            except (EngineError, OSError) as exc:
                record.state = S.DEAD
                record.error = f"removal failed: {exc}"
                with contextlib.suppress(OSError):
                    self._write(record)
                raise EngineError(f"could not remove container {record.id}: {exc}") from exc
            if when_gone is not None:
                try:
                    when_gone()
                except Exception:  # the container is gone all the same
                    logger.exception("after the removal of %s", record.id[:12])
        self._last_stats.pop(record.id, None)
        self._delete_aside(gone)

    def _set_aside(self, cid: str) -> str:
        """Move a container's directory out of the store (``<root>/.removing/<id>``): the
        container is gone for every reader at once, and a waiter (``wait``, condition "removed":
        ``docker run --rm``) wakes on the move, without waiting for the files to be deleted."""
        aside = os.path.join(self.root, ".removing", cid)
        os.makedirs(os.path.dirname(aside), mode=0o700, exist_ok=True)
        if os.path.lexists(aside):  # left by a removal that crashed half-way
            _rmtree(aside)
        os.rename(self._dir(cid), aside)
        return aside

    def _delete_aside(self, *paths: str) -> None:
        """Delete what ``_set_aside`` moved (or, with no path, whatever a crash left there)."""
        if not paths:
            base = os.path.join(self.root, ".removing")
            paths = tuple(os.path.join(base, n) for n in (os.listdir(base) if os.path.isdir(base) else ()))
        for path in paths:
            try:
                _rmtree(path)
            except OSError as exc:  # the container is gone already; the next reconcile tries again
                logger.warning("could not delete %s: %s", path, exc)

    def _leave_exit_code(self, record: ContainerRecord) -> None:
        """Keep the exit code of a container about to go for ``wait(condition="removed")``, whose
        last look may have been before the exit (``docker run --rm`` reports it). Kept
        ``REMOVED_KEEP_S``; older ones go now."""
        directory = os.path.dirname(self._removed_path(record.id))
        with contextlib.suppress(OSError):
            os.makedirs(directory, mode=0o700, exist_ok=True)
            now = time.time()
            if now - self._removed_pruned > REMOVED_KEEP_S / 10:  # a look at every one: not each time
                self._removed_pruned = now
                for entry in os.scandir(directory):
                    if entry.stat().st_mtime < now - REMOVED_KEEP_S:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.path)
            replace_json(self._removed_path(record.id), {"exit_code": record.exit_code})

    def _removed_exit_code(self, cid: str) -> int | None:
        try:
            with open(self._removed_path(cid), "rb") as f:
                return int(json.load(f)["exit_code"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _remove_anonymous_volumes(self, record: ContainerRecord) -> None:
        for mount in record.config.mounts:
            if mount.kind != "volume" or not mount.anonymous:
                continue
            with contextlib.suppress(NotFound, InvalidState):
                self.volumes.remove(mount.source,
                                    in_use=lambda name: self.volume_users(name, exclude=record.id))

    def rename(self, id_or_name: str, new_name: str) -> ContainerRecord:
        """``docker rename``: a new unique name (any state but REMOVING)."""
        name = validate_name(new_name)
        record = self._lookup(id_or_name)
        with self._names_locked(), self._locked(record.id) as record:
            if record.state is S.REMOVING:
                check_state("start", record.state, record.id)
            if record.name == name:
                raise InvalidArgument("Renaming a container with the same name as its current name")
            for other in (self._read(i) for i in self._ids()):
                if other is not None and other.name == name and other.id != record.id:
                    raise AlreadyExists(
                        f'Conflict. The container name "/{name}" is already in use by container '
                        f'"{other.id}". '
                        "You have to remove (or rename) that container to be able to reuse that name."
                    )
            record.name = name
            self._write(record)
            return record

    #
    # Logs
    #

    def logs(self, id_or_name: str, *, stdout: bool = True, stderr: bool = True, timestamps: bool = False,
             tail: int | None = None, since: float | None = None, until: float | None = None,
             follow: bool = False) -> Iterator[tuple[str, bytes, str]]:
        """``docker logs``: yield ``(stream, line, timestamp)`` for each line of output.

        ``stream`` is "stdout" or "stderr" (a TTY container has only stdout, with ``\\r\\n``);
        ``line`` is the raw bytes with their newline (the last may lack one); ``timestamp`` is
        Docker's RFC3339Nano UTC time (given whatever ``timestamps`` says: the caller prefixes
        it when asked). ``tail`` keeps the last N lines, ``since``/``until`` are Unix times
        (seconds). ``follow`` goes on until the container exits (or ``until`` passes).
        """
        record = self.get(id_or_name)
        wanted = {s for s, on in (("stdout", stdout), ("stderr", stderr)) if on}
        since_ns = None if since is None else int(float(since) * 1e9)
        until_ns = None if until is None else int(float(until) * 1e9)
        return self._log_lines(record, wanted, tail, since_ns, until_ns, follow)

    def _log_lines(self, record: ContainerRecord, wanted: set, tail: int | None, since_ns: int | None,
                   until_ns: int | None, follow: bool) -> Iterator[tuple[str, bytes, str]]:
        reader = LogReader(self.log_path(record.id))

        def keep(r: LogRecord) -> bool:
            return (r.stream in wanted and (since_ns is None or r.time_ns >= since_ns)
                    and (until_ns is None or r.time_ns <= until_ns))

        try:
            first = [r for r in reader.read_available() if keep(r)]
            running = follow and self._log_source_running(record)
            if not running:
                first += [r for r in reader.flush() if keep(r)]
            if tail is not None:
                first = list(deque(first, maxlen=max(0, tail))) if tail >= 0 else first
            for r in first:
                yield r.stream, r.line, r.timestamp
            if not running:
                return
            exit_dir = os.path.dirname(self._exit_file(record.id))
            with FileWatch([(self.log_path(record.id), IN_MODIFY), (exit_dir, IN_CLOSE_WRITE | IN_MOVED_TO),
                            (self._dir(record.id), IN_MOVED_TO | IN_CREATE)]) as watch:
                while True:
                    done = not self._log_source_running(record)
                    batch = reader.read_available()
                    if done:
                        batch += reader.flush()
                    for r in batch:
                        if until_ns is not None and r.time_ns > until_ns:
                            return
                        if keep(r):
                            yield r.stream, r.line, r.timestamp
                    if done or (until_ns is not None and time.time_ns() > until_ns):
                        return
                    watch.wait(1.0)
        finally:
            reader.close()

    def _log_source_running(self, record: ContainerRecord) -> bool:
        """True while more output may come: the record says active and no exit file exists yet
        (conmon drains the output and fsyncs the log before it writes that file, notes §4)."""
        current = self._read(record.id)
        if current is None or current.state not in (S.CREATED, *ACTIVE_STATES):
            return False
        return not self._stale(current)

    #
    # Top, stats
    #

    def top(self, id_or_name: str, ps_args: str = "-ef") -> dict:
        """``docker top``: the host's ``ps <ps_args>`` filtered to the container's processes.

        Docker's shape: {"Titles": [...], "Processes": [[...], ...]}. The pids come from the
        container's cgroup (``runc ps`` reads the same file).
        """
        record = self.get(id_or_name)
        check_state("top", record.state, record.id)
        pids = set(cgroups.CgroupPaths(self._cgroup_path(record.id)).pids())
        try:
            argv = ["ps", *shlex.split(ps_args or "-ef")]
        except ValueError as exc:
            raise InvalidArgument(f"invalid ps arguments: {exc}") from None
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise CommandError(f"cannot run ps: {exc.strerror}") from exc
        if proc.returncode != 0:
            raise CommandError(f"ps: {proc.stderr.decode('utf-8', 'replace').strip()}", proc.returncode)
        return parse_ps(proc.stdout.decode("utf-8", "replace"), pids)

    def stats(self, id_or_name: str) -> dict:
        """One sample of ``GET /containers/{id}/stats?stream=false`` from the container's cgroups.

        ``precpu_stats`` is this store's previous sample of the container (when taken less than a
        minute ago: a streaming caller calling once a second gets Docker's deltas), else zeros.
        A container that does not run answers zeros, as Docker does.
        """
        record = self.get(id_or_name)
        now = time.time_ns()
        if record.state in ACTIVE_STATES:
            sample = cgroups.read_stats(self._cgroup_path(record.id))
            networks = cgroups.network_stats(record.pid)
        else:
            sample = _empty_stats()
            networks = None
        previous = self._last_stats.get(record.id)
        pre_read, pre_cpu = ZERO_TIME, _empty_stats()["cpu_stats"]
        if previous and now - previous[0] < 60e9 and record.state in ACTIVE_STATES:
            pre_read, pre_cpu = format_time_ns(previous[0]), previous[1]
        if record.state in ACTIVE_STATES:
            self._last_stats[record.id] = (now, sample["cpu_stats"])
        answer = {
            "read": format_time_ns(now),
            "preread": pre_read,
            "pids_stats": sample["pids_stats"],
            "blkio_stats": sample["blkio_stats"],
            "num_procs": 0,
            "storage_stats": {},
            "cpu_stats": sample["cpu_stats"],
            "precpu_stats": pre_cpu,
            "memory_stats": sample["memory_stats"],
            "name": "/" + record.name,
            "id": record.id,
        }
        if networks:
            answer["networks"] = networks
        return answer

    #
    # Exec
    #

    def exec(self, id_or_name: str, cmd: list[str], *, env=(), user: str = "", workdir: str = "",
             tty: bool = False, detach: bool = False, privileged: bool = False,
             stdin: bytes | None = None, timeout: float | None = None):
        """``docker exec``: run ``cmd`` in the running container.

        Not detached: runs ``runc exec`` and waits; returns ``(exit_code, stdout, stderr)``. A
        command that cannot start gives 126 (not executable) or 127 (not found), with runc's
        message on stderr, as Docker does. Detached (``exec -d``): the process runs under its own
        conmon (its output in the session's log, its exit code in its exit file) and the exec id
        is returned. ``tty`` is only for detached sessions here: the interactive terminal exec
        (conmon ``--exec-attach``, notes §7) comes with the browser terminal.
        """
        if not cmd:
            raise InvalidArgument("No exec command specified")
        record = self._lookup(id_or_name)
        with self._locked(record.id) as record:
            self._sync(record)
            check_state("exec", record.state, record.id)
            with open(os.path.join(self._bundle(record.id), "config.json"), "rb") as f:
                spec = json.load(f)
        process = self._exec_process(record, spec, list(cmd), env, user, workdir, tty, privileged)
        exec_id = secrets.token_hex(32)
        session_dir = os.path.join(self._dir(record.id), "exec", exec_id)
        os.makedirs(session_dir, mode=0o700)
        process_file = os.path.join(session_dir, "process.json")
        replace_json(process_file, process)
        if detach:
            try:
                launch = self.conmon.exec_detached(record.id, self.runtime_of(record),
                                                   session_id=self._cuuid(exec_id), session_dir=session_dir,
                                                   process_file=process_file, terminal=tty)
            except CommandError as exc:
                if not tty or "exited before reporting" not in str(exc):
                    raise
                # crun failed before it handed over the terminal: see exec_session_start.
                message = self._silent_exec_failure(record.id, session_dir)
                shutil.rmtree(session_dir, ignore_errors=True)
                raise CommandError(f"OCI runtime create failed: {message}") from None
            replace_json(os.path.join(session_dir, "session.json"), {
                "id": exec_id, "container_id": record.id, "cmd": list(cmd), "tty": tty, "user": user,
                "workdir": workdir, "pid": launch.pid, "pid_start": process_start_time(launch.pid),
                "created": format_time_ns(time.time_ns()),
            })
            return exec_id
        if tty:
            shutil.rmtree(session_dir, ignore_errors=True)
            raise InvalidArgument("an attached exec with a TTY needs a terminal session (not available yet)")
        try:
            proc = self.runtime_of(record).exec(record.id, process_file, stdin=stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CommandError(f"exec in {record.id} did not finish within {timeout:g}s") from None
        finally:
            shutil.rmtree(session_dir, ignore_errors=True)
        return _exec_result(proc, self.runtime_of(record).name)

    def exec_inspect(self, exec_id: str) -> dict:
        """An exec session: {"id", "container_id", "cmd", "running", "exit_code", "pid", ...}.

        Interactive sessions (``exec_session``) also have "attach": True, "started", "socket",
        "ctl", "stdin" and, when the process could not start, "error" (exit code 126 or 127).
        """
        cid, directory, session = self._find_exec(exec_id)
        if session.get("attach"):
            return self._attach_session_state(cid, directory, session)
        code = read_exit_file(os.path.join(directory, "exits", cid))
        alive = process_start_time(session.get("pid", 0)) == session.get("pid_start")
        session["exit_code"] = code
        session["running"] = code is None and alive
        session["log_path"] = os.path.join(directory, "log")
        return session

    def _find_exec(self, exec_id: str) -> tuple[str, str, dict]:
        """(container id, session dir, session.json) of an exec; NotFound if there is none."""
        if _ID_RE.match(exec_id or ""):
            for cid in self._ids():
                directory = os.path.join(self._dir(cid), "exec", exec_id)
                try:
                    with open(os.path.join(directory, "session.json"), "rb") as f:
                        return cid, directory, json.load(f)
                except (FileNotFoundError, NotADirectoryError):
                    continue
        raise NotFound(f"No such exec instance: {exec_id}")

    #
    # Interactive exec sessions (the browser terminal, docker exec -it): runtime/attach.py
    #

    def exec_session(self, id_or_name: str, cmd: list[str], *, env=(), user: str = "", workdir: str = "",
                     tty: bool = True, stdin: bool = True, rows: int = 24, cols: int = 80,
                     privileged: bool = False) -> dict:
        """Prepare an exec that clients attach to: conmon ``-e --exec-attach`` (notes §7).

        Returns ``{"exec_id", "socket", "ctl"}`` once conmon serves the attach socket, *before*
        the process runs. The order: connect to "socket" (runtime.attach), then
        ``exec_session_start(exec_id)``, from this process or any other; so no output is lost.
        The session outlives this process (conmon's parent is PID 1); any number of clients
        may attach, leave and come back while it runs. With ``tty`` the PTY's first size is
        ``rows`` x ``cols`` (``process.consoleSize``); without it, ``stdin`` gives the process a
        pipe that the first client to half-close or leave closes (Docker's ``exec -i``).
        Files: ``<container>/exec/<exec_id>/`` session.json, process.json, the ``start`` FIFO,
        the ``sync`` file (conmon's pid and exit messages), ``ctl``/``winsz``, exits/<cid>.
        """
        if not cmd:
            raise InvalidArgument("No exec command specified")
        record = self._lookup(id_or_name)
        with self._locked(record.id) as record:
            self._sync(record)
            check_state("exec", record.state, record.id)
            with open(os.path.join(self._bundle(record.id), "config.json"), "rb") as f:
                spec = json.load(f)
        process = self._exec_process(record, spec, list(cmd), env, user, workdir, tty, privileged)
        if tty:
            process["consoleSize"] = {"height": max(1, int(rows)), "width": max(1, int(cols))}
        exec_id = secrets.token_hex(32)
        session_dir = os.path.join(self._dir(record.id), "exec", exec_id)
        os.makedirs(session_dir, mode=0o700)
        process_file = os.path.join(session_dir, "process.json")
        replace_json(process_file, process)
        try:
            launch = self.conmon.exec_attach(record.id, self.runtime_of(record),
                                             session_id=self._cuuid(exec_id), session_dir=session_dir,
                                             process_file=process_file, terminal=tty, stdin=stdin)
        except BaseException:
            self.conmon.remove_socket_link(self._cuuid(exec_id))
            shutil.rmtree(session_dir, ignore_errors=True)
            raise
        replace_json(os.path.join(session_dir, "session.json"), {
            "id": exec_id, "container_id": record.id, "cmd": list(cmd), "tty": tty, "stdin": stdin,
            "user": user, "workdir": workdir, "pid": 0, "pid_start": None, "attach": True,
            "conmon_pid": launch.conmon_pid, "created": format_time_ns(time.time_ns()),
        })
        return {"exec_id": exec_id, "socket": launch.socket, "ctl": launch.ctl}

    def exec_session_start(self, exec_id: str, timeout: float = 60.0) -> dict:
        """Run the process of a prepared session (the second start byte of notes §7, written to
        the session's ``start`` FIFO: any process may call this). Returns ``exec_session_inspect``
        once the process runs. InvalidState if it was started already; if it cannot start,
        records Docker's 126/127 and raises InvalidArgument (not found, not executable) or
        CommandError, with ``OCI runtime exec failed: <runc's message>``."""
        cid, directory, session = self._find_exec(exec_id)
        if not session.get("attach"):
            raise InvalidArgument(f"exec {exec_id} was not created for attach")
        lock_fd = os.open(os.path.join(directory, "lock"), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            marker = os.path.join(directory, "started")
            if os.path.exists(marker):
                raise InvalidState(f"exec {exec_id} has already been started")
            try:
                fd = os.open(os.path.join(directory, "start"), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:  # ENXIO: no reader, conmon is gone.
                raise InvalidState(f"exec {exec_id} cannot start: its monitor is gone ({exc.strerror})") from exc
            try:
                with open(marker, "w"):
                    pass
                os.write(fd, b"\0")
            finally:
                os.close(fd)
            messages = self._wait_sync(directory, session.get("conmon_pid", 0), timeout)
        finally:
            os.close(lock_fd)
            self.conmon.remove_session_tmp(self._cuuid(exec_id))
        if not messages and session.get("tty") and not conmon_alive(session.get("conmon_pid", 0), cid):
            # conmon leaves without a word when the runtime failed before it handed over the
            # session's terminal, as crun does for a program that is not there (runc hands the
            # terminal over first, and conmon reports runc's message).
            messages = [{"data": -1, "message": self._silent_exec_failure(cid, directory)}]
        if not messages:
            raise CommandError(f"exec {exec_id}: conmon did not report the process")
        value = int(messages[0].get("data", -1))
        if value > 0:
            session.update(pid=value, pid_start=process_start_time(value),
                           started=format_time_ns(time.time_ns()))
            replace_json(os.path.join(directory, "session.json"), session)
            return self.exec_inspect(exec_id)
        code, message = _exec_failure(messages[0].get("message", ""))
        session.update(exit_code=code, error=message)
        replace_json(os.path.join(directory, "session.json"), session)
        raise (InvalidArgument if code == 127 else CommandError)(f"OCI runtime exec failed: {message}")

    def _silent_exec_failure(self, cid: str, directory: str) -> str:
        """Why the exec of session ``directory`` could not start, when nobody said: its program
        looked up in the container's root (its own mounts included) along its PATH, in runc's words
        if it is not there."""
        try:
            with open(os.path.join(directory, "process.json"), "rb") as f:
                process = json.load(f)
            program = process["args"][0]
            record = self._read(cid)
        except (OSError, ValueError, KeyError, IndexError):
            return "exec failed: the process could not start"
        # The container's own root, unless its pid is gone or another process's now.
        alive = record is not None and record.pid and process_start_time(record.pid) == record.pid_start
        root = f"/proc/{record.pid}/root" if alive else ""
        if not root:
            return "exec failed: the process could not start: the container is not running"
        search = oci_spec.env_value(process.get("env") or [], "PATH") or "/usr/sbin:/usr/bin:/sbin:/bin"
        candidates = [program] if "/" in program else [f"{d or '.'}/{program}" for d in search.split(":")]
        for candidate in candidates:
            try:
                os.close(oci_spec.open_in_root(root, candidate if candidate.startswith("/")
                                               else os.path.join(process.get("cwd") or "/", candidate)))
            except OSError:
                continue
            return f'exec failed: unable to start container process: "{program}" could not be run'
        return f"exec failed: unable to start container process: {runc_not_found(program)}"

    def _wait_sync(self, directory: str, conmon_pid: int, timeout: float) -> list[dict]:
        """conmon's messages in the session's sync file, once there is one (or conmon is gone)."""
        path = os.path.join(directory, "sync")
        deadline = time.monotonic() + timeout
        pidfd = None
        with contextlib.suppress(OSError):
            pidfd = os.pidfd_open(conmon_pid) if conmon_pid > 0 else None
        try:
            with FileWatch([directory], IN_MODIFY | IN_CLOSE_WRITE) as watch:
                while True:
                    messages = read_sync_file(path)
                    if messages:
                        return messages
                    if pidfd is not None and _poll_readable(pidfd):
                        return read_sync_file(path)  # conmon ended: a last look.
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise CommandError(f"conmon did not report the exec process within {timeout:g}s")
                    watch.wait(min(remaining, 1.0), [pidfd] if pidfd is not None else [])
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def _attach_session_state(self, cid: str, directory: str, session: dict) -> dict:
        """exec_inspect of an interactive session: from its sync file, exit file and conmon."""
        messages = read_sync_file(os.path.join(directory, "sync"))
        first = int(messages[0].get("data", -1)) if messages else None
        if not session.get("pid") and first is not None and first > 0:
            session["pid"] = first  # The starter died before recording it.
        code = read_exit_file(os.path.join(directory, "exits", cid))
        if code is None and len(messages) > 1:
            code = int(messages[1].get("data", -1))
        if code is None and first is not None and first < 0:
            code, session["error"] = _exec_failure(messages[0].get("message", ""))
        if code is None:
            code = session.get("exit_code")
        started = bool(session.get("pid")) or os.path.exists(os.path.join(directory, "started"))
        session["exit_code"] = code
        session["started"] = started
        session["running"] = bool(session.get("pid")) and code is None and \
            conmon_alive(session.get("conmon_pid", 0), cid)
        session["socket"] = self.conmon.attach_path(self._cuuid(session["id"]))
        session["ctl"] = os.path.join(directory, "ctl")
        return session

    def exec_session_inspect(self, exec_id: str) -> dict:
        """``exec_inspect`` (the same dict); for a Docker client's ``GET /exec/ID/json``."""
        return self.exec_inspect(exec_id)

    def exec_session_resize(self, exec_id: str, rows: int, cols: int) -> None:
        """Resize the session's PTY (debounced, runtime.attach.resize_ctl). Allowed before the
        start: conmon applies the last size to the PTY when it comes (notes §6). Nothing for a
        session without a TTY; InvalidState once the session ended."""
        session = self.exec_inspect(exec_id)
        if session.get("exit_code") is not None:
            raise InvalidState(f"exec {exec_id} is not running")
        if not session.get("tty"):
            return
        try:
            resize_ctl(session["ctl"], rows, cols)
        except OSError as exc:
            raise InvalidState(f"exec {exec_id} is not running") from exc

    def exec_session_wait(self, exec_id: str, timeout: float | None = None) -> int:
        """Block until the session's process ends; its exit code (126/127 if it could not start,
        LOST_EXIT_CODE if conmon died without one). TimeoutError after ``timeout`` seconds."""
        cid, directory, session = self._find_exec(exec_id)
        conmon_pid = session.get("conmon_pid", 0)
        if not wait_for_exit(os.path.join(directory, "exits", cid), watch_pids=[conmon_pid] if conmon_pid else [],
                             timeout=timeout):
            raise TimeoutError(f"exec {exec_id} still running after {timeout:g}s")
        code = self.exec_inspect(exec_id)["exit_code"]
        return LOST_EXIT_CODE if code is None else code

    def _end_exec_sessions(self, cid: str) -> None:
        """Stop the monitors of sessions prepared but never started (they wait on their FIFO
        forever) and remove every session's socket symlink and TMPDIR."""
        for exec_id in self._exec_sessions(cid):
            directory = os.path.join(self._dir(cid), "exec", exec_id)
            with contextlib.suppress(FileNotFoundError, ValueError):
                with open(os.path.join(directory, "session.json"), "rb") as f:
                    session = json.load(f)
                pid = session.get("conmon_pid", 0)
                if session.get("attach") and conmon_alive(pid, cid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signals.SIGKILL)
            self.conmon.remove_session_tmp(self._cuuid(exec_id))

    #
    # Container attach
    #

    def resize(self, id_or_name: str, rows: int, cols: int) -> None:
        """``POST /containers/ID/resize``: the container's PTY (its ``<bundle>/ctl``, debounced,
        runtime.attach.resize_ctl). Nothing for a container without a TTY; InvalidState unless
        it is created or running."""
        record = self.get(id_or_name)
        if record.state not in (S.CREATED, S.RUNNING, S.PAUSED, S.STOPPING):
            raise InvalidState(f"Container {record.id} is not running")
        if not record.config.tty:
            return
        try:
            resize_ctl(os.path.join(self._bundle(record.id), "ctl"), rows, cols)
        except OSError as exc:
            raise InvalidState(f"Container {record.id} is not running") from exc

    def _exec_sessions(self, cid: str) -> list[str]:
        try:
            return os.listdir(os.path.join(self._dir(cid), "exec"))
        except FileNotFoundError:
            return []

    def _exec_process(self, record: ContainerRecord, spec: dict, cmd: list[str], env, user: str, workdir: str,
                      tty: bool, privileged: bool) -> dict:
        """The ``process`` object of an exec: the container's, with the exec's own overrides."""
        base = spec["process"]
        process = {
            "terminal": bool(tty),
            "user": dict(base.get("user") or {"uid": 0, "gid": 0}),
            "args": cmd,
            "env": oci_spec.merge_env(base.get("env", []), list(env)),
            "cwd": workdir or base.get("cwd") or "/",
            "capabilities": base.get("capabilities"),
            "noNewPrivileges": base.get("noNewPrivileges", True),
        }
        if not process["cwd"].startswith("/"):
            raise InvalidArgument(
                f"the working directory '{workdir}' is invalid, it needs to be an absolute path")
        if user:
            resolved = oci_spec.resolve_user(spec["root"]["path"], user)
            process["user"] = resolved.to_spec()
            if oci_spec.env_value(list(env), "HOME") is None:
                process["env"] = oci_spec.merge_env(process["env"], [f"HOME={resolved.home}"])
        if privileged:
            caps = oci_spec.effective_capabilities(privileged=True)
            process["capabilities"] = {"bounding": caps, "effective": caps, "permitted": caps}
        if tty:
            process["consoleSize"] = {"height": 24, "width": 80}
            if oci_spec.env_value(process["env"], "TERM") is None:
                process["env"].append("TERM=xterm")
        if base.get("rlimits"):
            process["rlimits"] = base["rlimits"]
        return process

    #
    # Docker's shapes
    #

    def inspect(self, id_or_name: str) -> dict:
        """``GET /containers/{id}/json`` (ContainerInspectResponse of the Engine API v1.41)."""
        record = self.get(id_or_name)
        directory = self._dir(record.id)
        running = record.state in ACTIVE_STATES
        image_layers = []
        with contextlib.suppress(NotFound, EngineError):
            image = self.images.get(record.image_id)
            image_layers = [self.layers.get(c).path for c in image.chain_ids]
        graph = {
            "LowerDir": ":".join(reversed(image_layers)) if image_layers else None,
            "MergedDir": os.path.join(directory, "merged"),
            "UpperDir": os.path.join(directory, "upper"),
            "WorkDir": os.path.join(directory, "work"),
        }
        exec_ids = [e for e in self._exec_sessions(record.id) if running and self._exec_running(record.id, e)]
        return {
            "Id": record.id,
            "Created": record.created,
            "Path": record.path,
            "Args": list(record.args),
            "State": {
                "Status": record.state.docker_status(),
                "Running": running,
                "Paused": record.state is S.PAUSED,
                "Restarting": False,
                "OOMKilled": record.oom_killed,
                "Dead": record.state is S.DEAD,
                "Pid": record.pid if running else 0,
                "ExitCode": record.exit_code,
                "Error": record.error,
                "StartedAt": record.started_at,
                "FinishedAt": record.finished_at,
            },
            "Image": record.image_id,
            "ResolvConfPath": os.path.join(directory, "resolv.conf"),
            "HostnamePath": os.path.join(directory, "hostname"),
            "HostsPath": os.path.join(directory, "hosts"),
            "LogPath": self.log_path(record.id),
            "Name": "/" + record.name,
            "RestartCount": record.restart_count,
            "Driver": GRAPH_DRIVER,
            "Platform": "linux",
            "MountLabel": "",
            "ProcessLabel": "",
            "AppArmorProfile": "",
            "ExecIDs": exec_ids or None,
            "HostConfig": self._host_config(record),
            "GraphDriver": {"Name": GRAPH_DRIVER, "Data": {k: v for k, v in graph.items() if v}},
            "Mounts": self._mount_points(record),
            "Config": self._docker_config(record),
            "NetworkSettings": self._network_settings(record),
        }

    def summary(self, record: ContainerRecord) -> dict:
        """One entry of ``GET /containers/json`` (ContainerSummary) for ``record``."""
        return self.summaries([record])[0]

    def summaries(self, records: list[ContainerRecord]) -> list[dict]:
        """``summary`` of each record; the network hook is asked once for all of them when it can
        (``summary_networks``: one listing of the endpoints, each network's id once)."""
        batch = getattr(self.network, "summary_networks", None)
        if batch is not None:
            parts = batch(records)
        else:
            ports = getattr(self.network, "summary_ports", None)
            parts = [(ports(r) if ports is not None else _summary_ports(r.config),
                      self._network_settings(r)["Networks"]) for r in records]
        now = time.time_ns()
        return [self._summary(r, p, n, now) for r, (p, n) in zip(records, parts)]

    def _summary(self, record: ContainerRecord, ports: list[dict], networks: dict, now_ns: int) -> dict:
        config = record.config
        args = [f"'{a}'" if " " in a else a for a in record.args]
        command = f"{record.path} {' '.join(args)}" if args else record.path
        return {
            "Id": record.id,
            "Names": ["/" + record.name],
            "Image": record.image_ref or record.image_id,
            "ImageID": record.image_id,
            "Command": command,
            "Created": _unix_seconds(record.created),
            "Ports": ports,
            "Labels": {str(k): str(v) for k, v in (config.labels or {}).items()},
            "State": record.state.docker_status(),
            "Status": status_text(record, now_ns),
            "HostConfig": {"NetworkMode": config.network_mode or "default"},
            "NetworkSettings": {"Networks": networks},
            "Mounts": self._mount_points(record),
        }

    def _exec_running(self, cid: str, exec_id: str) -> bool:
        path = os.path.join(self._dir(cid), "exec", exec_id)
        try:
            with open(os.path.join(path, "session.json"), "rb") as f:
                session = json.load(f)
        except (FileNotFoundError, ValueError):
            return False
        if read_exit_file(os.path.join(path, "exits", cid)) is not None:
            return False
        return process_start_time(session.get("pid", 0)) == session.get("pid_start")

    def _host_config(self, record: ContainerRecord) -> dict:
        config = record.config
        binds = [f"{m.source}:{m.target}{':ro' if m.read_only else ''}" for m in config.mounts
                 if m.kind == "bind" or not m.anonymous]
        policy = config.restart_policy or _default_restart_policy()
        return {
            "Binds": binds or None,
            "ContainerIDFile": "",
            # The API's enum has no k8s-file: json-file is what clients expect for ``docker logs``
            # to work; LogPath is conmon's k8s-file all the same.
            "LogConfig": {"Type": "json-file", "Config": {}},
            "NetworkMode": config.network_mode or "default",
            "PortBindings": config.port_bindings or {},
            "RestartPolicy": {"Name": policy.get("Name") or "no",
                              "MaximumRetryCount": int(policy.get("MaximumRetryCount") or 0)},
            "AutoRemove": config.auto_remove,
            "VolumeDriver": "",
            "VolumesFrom": None,
            "CapAdd": list(config.cap_add) or None,
            "CapDrop": list(config.cap_drop) or None,
            "CgroupnsMode": "host",
            "Dns": list(config.dns),
            "DnsOptions": list(config.dns_options),
            "DnsSearch": list(config.dns_search),
            "ExtraHosts": list(config.extra_hosts) or None,
            "GroupAdd": None,
            "IpcMode": "private",
            "Cgroup": "",
            "Links": list(config.links) or None,
            "OomScoreAdj": 0,
            "PidMode": "",
            "Privileged": config.privileged,
            "PublishAllPorts": config.publish_all_ports,
            "ReadonlyRootfs": config.read_only,
            "SecurityOpt": list(config.security_opt) or None,
            "UTSMode": "",
            "UsernsMode": "",
            "ShmSize": oci_spec.SHM_SIZE,
            "Runtime": config.runtime or "runc",
            "ConsoleSize": [0, 0],
            "Isolation": "default",
            "CpuShares": 0,
            "Memory": config.memory,
            "NanoCpus": config.nano_cpus,
            "CgroupParent": "",
            "BlkioWeight": 0,
            "BlkioWeightDevice": None,
            "BlkioDeviceReadBps": None,
            "BlkioDeviceWriteBps": None,
            "BlkioDeviceReadIOps": None,
            "BlkioDeviceWriteIOps": None,
            "CpuPeriod": 0,
            "CpuQuota": 0,
            "CpuRealtimePeriod": 0,
            "CpuRealtimeRuntime": 0,
            "CpusetCpus": "",
            "CpusetMems": "",
            "Devices": None,
            "DeviceCgroupRules": None,
            "DeviceRequests": None,
            "KernelMemory": 0,
            "KernelMemoryTCP": 0,
            "MemoryReservation": 0,
            "MemorySwap": 2 * config.memory if config.memory else 0,
            "MemorySwappiness": None,
            "OomKillDisable": False,
            "PidsLimit": config.pids_limit or None,
            "Ulimits": None,
            "CpuCount": 0,
            "CpuPercent": 0,
            "IOMaximumIOps": 0,
            "IOMaximumBandwidth": 0,
            "Mounts": [{"Type": m.kind, "Source": m.source, "Target": m.target, "ReadOnly": m.read_only}
                       for m in config.mounts] or None,
            "MaskedPaths": [] if config.privileged else list(oci_spec.DEFAULT_MASKED_PATHS),
            "ReadonlyPaths": [] if config.privileged else list(oci_spec.DEFAULT_READONLY_PATHS),
        }

    def _docker_config(self, record: ContainerRecord) -> dict:
        config = record.config
        answer = {
            "Hostname": config.hostname,
            "Domainname": config.domainname,
            "User": config.user,
            "AttachStdin": False,
            "AttachStdout": not config.open_stdin,
            "AttachStderr": not config.open_stdin,
            "ExposedPorts": {p: {} for p in config.exposed_ports} or None,
            "Tty": config.tty,
            "OpenStdin": config.open_stdin,
            "StdinOnce": config.stdin_once,
            "Env": list(config.env),
            "Cmd": list(config.cmd) if config.cmd else None,
            "Image": record.image_ref,
            "Volumes": {m.target: {} for m in config.mounts if m.kind == "volume"} or None,
            "WorkingDir": config.working_dir,
            "Entrypoint": list(config.entrypoint) if config.entrypoint else None,
            "OnBuild": None,
            "Labels": {str(k): str(v) for k, v in (config.labels or {}).items()},
        }
        if config.stop_signal:
            answer["StopSignal"] = config.stop_signal
        if config.stop_timeout is not None:
            answer["StopTimeout"] = config.stop_timeout
        return answer

    def _mount_points(self, record: ContainerRecord) -> list[dict]:
        points = []
        for m in record.config.mounts:
            if m.kind == "volume":
                source = os.path.join(self.volumes.volumes_dir, m.source, "_data")
                points.append({"Type": "volume", "Name": m.source, "Source": source, "Destination": m.target,
                               "Driver": "local", "Mode": "", "RW": not m.read_only,
                               "Propagation": ""})
            else:
                points.append({"Type": "bind", "Source": m.source, "Destination": m.target, "Mode": "",
                               "RW": not m.read_only, "Propagation": "rprivate"})
        return points

    def _network_settings(self, record: ContainerRecord) -> dict:
        settings = getattr(self.network, "settings", None)
        if settings is not None:
            answer = settings(record)
            if answer is not None:
                return answer
        mode = record.config.network_mode or "bridge"
        name = "container" if mode.startswith("container:") else mode
        endpoint = {
            "IPAMConfig": None, "Links": None, "Aliases": None, "NetworkID": "", "EndpointID": "",
            "Gateway": "", "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "", "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0, "MacAddress": "", "DriverOpts": None,
        }
        return {
            "Bridge": "", "SandboxID": "", "HairpinMode": False, "LinkLocalIPv6Address": "",
            "LinkLocalIPv6PrefixLen": 0, "Ports": {}, "SandboxKey": "", "SecondaryIPAddresses": None,
            "SecondaryIPv6Addresses": None, "EndpointID": "", "Gateway": "", "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0, "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "", "MacAddress": "",
            "Networks": {} if name.startswith("container") else {name: endpoint},
        }


ACCEPTS_STOP = (S.CREATED, S.RUNNING, S.PAUSED, S.STOPPING)


#
# Docker's rules
#


def validate_name(name: str) -> str:
    """A container name as Docker allows it (``[a-zA-Z0-9][a-zA-Z0-9_.-]+``, a leading "/" is
    dropped); InvalidArgument in Docker's words otherwise."""
    bare = (name or "").strip()
    bare = bare[1:] if bare.startswith("/") else bare
    if not NAME_RE.match(bare):
        raise InvalidArgument(f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
    return bare


def merge_image_config(config: ContainerConfig, image_config: dict) -> ContainerConfig:
    """The effective config: the run options over the image's config, as Docker merges them.

    - Entrypoint: the option's if given (``[]`` or ``[""]`` clears the image's), else the image's.
      Cmd: the option's if given; else the image's, unless the entrypoint was given (Docker drops
      the image's Cmd when ``--entrypoint`` is set).
    - Env: the image's, each key replaced by the option's value; WorkingDir, User, StopSignal:
      the option's, else the image's. ExposedPorts and Labels: the union, the option's winning.
    - Volumes: the image's, as anonymous volume mounts unless a mount already covers the path.
    """
    merged = dataclasses.replace(config)
    merged.mounts = [dataclasses.replace(m) for m in config.mounts]
    image_entrypoint = image_config.get("Entrypoint") or None
    image_cmd = image_config.get("Cmd") or None
    if config.entrypoint is not None:
        entrypoint = [e for e in config.entrypoint]
        merged.entrypoint = None if entrypoint in ([], [""]) else entrypoint
        merged.cmd = list(config.cmd) if config.cmd else None
    else:
        merged.entrypoint = list(image_entrypoint) if image_entrypoint else None
        merged.cmd = list(config.cmd) if config.cmd else (list(image_cmd) if image_cmd else None)
    merged.env = oci_spec.merge_env(image_config.get("Env") or [], config.env or [])
    merged.working_dir = config.working_dir or image_config.get("WorkingDir") or ""
    merged.user = config.user or image_config.get("User") or ""
    merged.stop_signal = config.stop_signal or image_config.get("StopSignal") or ""
    merged.exposed_ports = {**(image_config.get("ExposedPorts") or {}), **(config.exposed_ports or {})}
    merged.labels = {**(image_config.get("Labels") or {}), **(config.labels or {})}
    targets = {m.target.rstrip("/") or "/" for m in merged.mounts}
    for path in sorted(image_config.get("Volumes") or {}):
        if path.rstrip("/") not in targets:
            merged.mounts.append(Mount(source="", target=path, kind="volume", anonymous=True))
    return merged


def parse_signal(value: str | int) -> int:
    """``KILL``, ``SIGKILL``, ``sigkill`` or ``9`` -> 9; InvalidArgument otherwise."""
    text = str(value).strip()
    if text.isdigit():
        number = int(text)
        if 0 < number < signals.NSIG:
            return number
    else:
        name = text.upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        if name.startswith("SIGRTMIN+") or name.startswith("SIGRTMAX-"):
            base, _, offset = name.partition("+" if "+" in name else "-")
            if offset.isdigit():
                number = (signals.SIGRTMIN + int(offset)) if "+" in name else (signals.SIGRTMAX - int(offset))
                if signals.SIGRTMIN <= number <= signals.SIGRTMAX:
                    return number
        member = getattr(signals.Signals, name, None) if hasattr(signals.Signals, name) else None
        if member is not None:
            return int(member)
    raise InvalidArgument(f"Invalid signal: {value}")


def human_duration(seconds: float) -> str:
    """Go's units.HumanDuration, as in ``Up 3 seconds`` and ``Exited (0) 5 minutes ago``."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def status_text(record: ContainerRecord, now_ns: int | None = None) -> str:
    """The Status column of ``docker ps``: "Up 3 seconds", "Up 1 second (Paused)", "Exited (0) 5
    seconds ago", "Created", "Removal In Progress", "Dead"."""
    now = time.time_ns() if now_ns is None else now_ns

    def since(text: str) -> str:
        try:
            return human_duration(max(0, now - parse_time_ns(text)) / 1e9)
        except ValueError:
            return human_duration(0)

    if record.state in ACTIVE_STATES:
        suffix = " (Paused)" if record.state is S.PAUSED else ""
        return f"Up {since(record.started_at)}{suffix}"
    if record.state is S.REMOVING:
        return "Removal In Progress"
    if record.state is S.DEAD:
        return "Dead"
    if record.started_at == ZERO_TIME or record.state in (S.CONFIGURED, S.CREATED):
        return "Created"
    return f"Exited ({record.exit_code}) {since(record.finished_at)} ago"


def parse_ps(output: str, pids: set[int]) -> dict:
    """Docker's top answer from ``ps`` output: the header's titles, and the rows whose PID column
    is one of ``pids`` (the last column, the command, may contain spaces)."""
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines:
        return {"Titles": [], "Processes": []}
    titles = lines[0].split()
    try:
        pid_index = titles.index("PID")
    except ValueError:
        raise InvalidArgument("Couldn't find PID field in ps output") from None
    processes = []
    for line in lines[1:]:
        fields = line.split(None, len(titles) - 1)
        if len(fields) <= pid_index or not fields[pid_index].isdigit():
            continue
        if int(fields[pid_index]) in pids:
            processes.append(fields)
    return {"Titles": titles, "Processes": processes}


def _summary_ports(config: ContainerConfig) -> list[dict]:
    ports = []
    for key in sorted(set(config.exposed_ports) | set(config.port_bindings)):
        number, _, proto = key.partition("/")
        if not number.isdigit():
            continue
        # Published ports come with the network work; an exposed port shows without a public one.
        ports.append({"PrivatePort": int(number), "Type": proto or "tcp"})
    return ports


def _empty_stats() -> dict:
    return {
        "cpu_stats": {"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
                      "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}},
        "memory_stats": {},
        "pids_stats": {},
        "blkio_stats": {"io_service_bytes_recursive": None, "io_serviced_recursive": None},
    }


def _exec_result(proc: subprocess.CompletedProcess, runtime: str = "runc") -> tuple[int, bytes, bytes]:
    """(exit code, stdout, stderr) of ``<runtime> exec``; a process that could not start gets
    Docker's 126/127 and the runtime's message (both exit 255: runc with a ``level=error`` line,
    crun with one line of its own, CRUN_EXEC_FAILURE_RE)."""
    from runtime.oci import CRUN_EXEC_FAILURE_RE, runc_message

    code, out, err = proc.returncode, proc.stdout, proc.stderr
    failed = b"level=error" in err if runtime == "runc" else (
        err.count(b"\n") <= 1 and CRUN_EXEC_FAILURE_RE.match(err.decode("utf-8", "replace")) is not None)
    if code == 255 and failed:
        message = runc_message(err.decode("utf-8", "replace"))
        lowered = message.lower()
        if "executable file not found" in lowered or "no such file or directory" in lowered:
            code = 127
        elif "permission denied" in lowered:
            code = 126
        else:
            code = 126
        err = f"OCI runtime exec failed: {message}\n".encode()
    return code, out, err


def _exec_failure(raw: str) -> tuple[int, str]:
    """Docker's exit code (127 not found, 126 otherwise) and the runtime's message of a failed exec."""
    from runtime.oci import runc_message

    message = runc_message(raw) or "unknown error"
    lowered = message.lower()
    if "executable file not found" in lowered or "no such file or directory" in lowered:
        return 127, message
    return 126, message


def _poll_readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _security_options(options: list[str]) -> dict[str, str]:
    result = {}
    for opt in options:
        key, sep, value = opt.partition("=" if "=" in opt else ":")
        result[key.strip()] = value.strip() if sep else "true"
    return result


def _resources(config: ContainerConfig):
    return oci_spec.with_resources(memory=config.memory, nano_cpus=config.nano_cpus,
                                   pids_limit=config.pids_limit)


@functools.lru_cache(maxsize=4096)
def _time_ns_or_zero(text: str) -> int:
    """``parse_time_ns(text)``, 0 if it is not a time; remembered (list() sorts by every record's
    created time, and its summaries show it again)."""
    try:
        return parse_time_ns(text)
    except ValueError:
        return 0


def _created_ns(record: ContainerRecord) -> int:
    return _time_ns_or_zero(record.created) if isinstance(record.created, str) else 0


def _unix_seconds(text: str) -> int:
    return _time_ns_or_zero(text) // 1_000_000_000 if isinstance(text, str) else 0


def _copy_json(value):
    """A copy of a JSON value (dicts, lists, scalars) sharing no dict or list with it."""
    if type(value) is dict:
        value = dict(value)
        items = value.items()
    else:
        value = list(value)
        items = enumerate(value)
    for key, item in items:
        if type(item) is dict or type(item) is list:
            value[key] = _copy_json(item)
    return value


def _copy_record(record: ContainerRecord) -> ContainerRecord:
    """A copy of a record parsed from JSON that shares nothing mutable with it (a deepcopy, ten
    times cheaper: its values are dataclasses, dicts, lists and immutable scalars)."""
    config = object.__new__(ContainerConfig)
    config.__dict__.update(record.config.__dict__)
    for key, value in config.__dict__.items():
        if type(value) is dict or type(value) is list:
            config.__dict__[key] = _copy_json(value)
    config.mounts = [dataclasses.replace(m) for m in record.config.mounts]
    copy = object.__new__(ContainerRecord)
    copy.__dict__.update(record.__dict__)
    copy.config = config
    copy.args = list(record.args)
    return copy


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _read_int(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _read_host_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError:
        return None


def _write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{secrets.token_hex(4)}"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _docker_exit_code(code: int) -> int:
    """The exit code Docker reports for conmon's: -1 is conmon's --timeout kill (SIGKILL)."""
    return 128 + signals.SIGKILL if code == -1 else code


def _rmtree(path: str) -> None:
    """Remove a container's directory. Refuses to cross into a mount (a rootfs still mounted).

    A monitor that is just ending (conmon writing its exit and oom files after a forced remove)
    can add a file while the tree goes: then the removal is tried again, a few times.
    """
    def onerror(func: Callable, target: str, exc_info) -> None:
        if isinstance(exc_info[1], FileNotFoundError):
            return
        raise exc_info[1]

    for attempt in range(5):
        try:
            shutil.rmtree(path, onerror=onerror)
            return
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY or attempt == 4:
                raise
            time.sleep(0.05 * (attempt + 1))


#
# Names
#

_ADJECTIVES = """
admiring agile amazing bold brave bright busy calm careful charming cheerful clever cool curious
daring dazzling determined eager earnest elegant epic fervent festive focused friendly gallant gentle
gifted gracious happy hardcore hopeful humble jolly keen kind laughing lively loving lucid magical
merry modest musing nice nimble noble optimistic patient peaceful practical priceless quiet quirky
relaxed resilient serene sharp silly sleepy stoic sweet tender thirsty trusting upbeat vibrant
vigilant vigorous wizardly wonderful xenodochial youthful zealous zen
""".split()

_SURNAMES = """
agnesi albattani allen archimedes ardinghelli aryabhata austin babbage banach bardeen bartik bassi
bell bhabha bhaskara blackwell bohr booth borg bose brahmagupta brattain brown carson cartwright
chandrasekhar chaplygin chatelet clarke colden cori cray curie darwin davinci dijkstra dubinsky
easley einstein elion engelbart euclid euler faraday fermat fermi feynman franklin galileo gates
goldberg goodall hamilton hawking heisenberg hermann hodgkin hopper hypatia jackson jang johnson
kalam kapitsa kare keller kepler khorana kilby knuth kowalevski lalande lamarr leakey leavitt
lovelace lumiere mahavira margulis mayer mccarthy mcclintock meitner mendel merkle mirzakhani
montalcini moore morse napier nash neumann newton nobel noether northcutt noyce panini pascal
pasteur payne perlman pike poincare ptolemy raman ramanujan ritchie roentgen rosalind saha sammet
shannon shockley sinoussi snyder spence stonebraker sutherland swanson tesla thompson torvalds
turing varahamihira visvesvaraya volhard wescoff wiles williams wilson wing wozniak wright yalow
yonath zhukovsky
""".split()


def _random_name(taken) -> str:
    """A Docker-like random name, ``adjective_surname``, not in ``taken`` (a digit is appended
    after a few collisions, as Docker's namesgenerator does)."""
    for attempt in range(100):
        name = f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_SURNAMES)}"
        if attempt >= 5:
            name += str(secrets.randbelow(10))
        if name not in taken:
            return name
    return f"berth_{secrets.token_hex(6)}"

