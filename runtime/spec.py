"""The OCI runtime spec (``bundle/config.json``) of a container, built from composable options.

As containerd's ``pkg/oci/spec_opts.go``: ``default_spec()`` gives Docker's defaults, and each
``with_*`` function returns an option, a small function that edits the spec in place::

    spec = generate(
        with_root(merged),
        with_process_args(["sh", "-c", "echo hi"]),
        with_env(["PATH=/bin"]),
        with_user(merged, "nobody"),   # after with_env: it adds HOME
        with_capabilities(cap_drop=["ALL"]),
        with_cgroups_path(f"/berth/{cid}"),
    )

Options are applied in order; later ones win. Nothing here runs a process or touches the host except
``with_user`` (it reads the rootfs's /etc/passwd and /etc/group, never following a symlink out of the
rootfs) and ``with_rlimits``/``with_capabilities`` (they read this process's limits and capability
bounding set, because a container cannot get more than runc has).

Docker's defaults, as moby's ``oci/defaults.go`` and ``profiles/seccomp`` have them: 14 capabilities,
the masked and read-only /proc and /sys paths, /dev as a tmpfs with devpts, mqueue and a 64 MiB
/dev/shm, a seccomp allowlist that answers EPERM to everything else. One difference: Berth sets
``noNewPrivileges`` by default (docs: DESIGN.md, "Security"); ``security_opt no-new-privileges=false``
turns it off.
"""

from __future__ import annotations

import copy
import errno
import os
import platform
import resource
import stat
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

from runtime.errors import EngineError, InvalidArgument

__all__ = [
    "ALL_CAPABILITIES",
    "DEFAULT_CAPABILITIES",
    "DEFAULT_MASKED_PATHS",
    "DEFAULT_PATH",
    "DEFAULT_READONLY_PATHS",
    "ExecUser",
    "SpecOpt",
    "check_seccomp_support",
    "clean_destination",
    "default_seccomp_profile",
    "default_spec",
    "generate",
    "hosts_file",
    "normalise_capabilities",
    "open_in_root",
    "read_file_in_root",
    "resolv_conf",
    "resolve_user",
    "with_capabilities",
    "with_cgroups_path",
    "with_cwd",
    "with_env",
    "with_etc_files",
    "with_hostname",
    "with_masked_paths",
    "with_mounts",
    "with_namespaces",
    "with_no_new_privileges",
    "with_privileged_devices",
    "with_process_args",
    "with_readonly_paths",
    "with_readonly_rootfs",
    "with_resources",
    "with_rlimits",
    "with_root",
    "with_seccomp",
    "with_tty",
    "with_user",
]

SpecOpt = Callable[[dict], None]

OCI_VERSION = "1.0.2-dev"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The kernel's capabilities, by bit number (include/uapi/linux/capability.h).
ALL_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
# Docker's default set (moby oci/caps/defaults.go), in its order.
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)
DEFAULT_MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
DEFAULT_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
# Docker's /etc/hosts head (libnetwork/etchosts).
HOSTS_HEAD = (
    ("127.0.0.1", "localhost"),
    ("::1", "localhost ip6-localhost ip6-loopback"),
    ("fe00::0", "ip6-localnet"),
    ("ff00::0", "ip6-mcastprefix"),
    ("ff02::1", "ip6-allnodes"),
    ("ff02::2", "ip6-allrouters"),
)
# Nameservers Docker falls back to when the host only has local ones (libnetwork/resolvconf).
DEFAULT_NAMESERVERS = ("8.8.8.8", "8.8.4.4")
DEFAULT_NOFILE = 1048576
DEFAULT_CONSOLE = (24, 80)
CPU_PERIOD = 100_000  # µs, the CFS period Docker uses for --cpus
SHM_SIZE = 64 << 20

# Files read from an image's rootfs (/etc/passwd, /etc/group) are bounded: they come from the image.
MAX_ETC_FILE = 4 << 20
_MAX_SYMLINKS = 40


def default_spec() -> dict:
    """Return a new spec with Docker's defaults and no process arguments yet."""
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": [],
            "env": [f"PATH={DEFAULT_PATH}"],
            "cwd": "/",
            "capabilities": _capability_sets(list(DEFAULT_CAPABILITIES)),
            "noNewPrivileges": True,
            "oomScoreAdj": 0,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["ro", "nosuid", "noexec", "nodev"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={SHM_SIZE}"]},
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "maskedPaths": list(DEFAULT_MASKED_PATHS),
            "readonlyPaths": list(DEFAULT_READONLY_PATHS),
            # Deny every device; runc adds its own allowlist (null, zero, full, random, urandom,
            # tty, console, ptmx, pts) on top.
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        },
    }


def generate(*opts: SpecOpt, base: dict | None = None) -> dict:
    """Return ``base`` (default: ``default_spec()``, copied) with each option applied in order."""
    spec = copy.deepcopy(base) if base is not None else default_spec()
    for opt in opts:
        opt(spec)
    return spec


#
# Process
#


def with_process_args(args: list[str]) -> SpecOpt:
    """Set the command line (entrypoint + cmd, already merged)."""
    if not args:
        raise InvalidArgument("No command specified")

    def opt(spec: dict) -> None:
        spec["process"]["args"] = [str(a) for a in args]

    return opt


def with_env(env: Iterable[str]) -> SpecOpt:
    """Set each ``KEY=value`` over the existing environment (a later value of a key wins).

    A bare ``KEY`` (no ``=``) is dropped, as Docker drops a ``-e KEY`` the caller did not resolve.
    """
    items = [str(e) for e in env]

    def opt(spec: dict) -> None:
        spec["process"]["env"] = merge_env(spec["process"].get("env", []), items)

    return opt


def merge_env(base: Iterable[str], overrides: Iterable[str]) -> list[str]:
    """Return ``base`` with each ``KEY=value`` of ``overrides`` replacing or appended, order kept."""
    result: dict[str, str] = {}
    for item in list(base) + list(overrides):
        key, sep, _ = item.partition("=")
        if not sep or not key:
            continue
        result.pop(key, None)
        result[key] = item
    return list(result.values())


def env_value(env: Iterable[str], key: str) -> str | None:
    """The value of ``key`` in a ``KEY=value`` list; None when absent."""
    for item in env:
        k, sep, v = item.partition("=")
        if sep and k == key:
            return v
    return None


def with_cwd(cwd: str) -> SpecOpt:
    """Set the working directory; it must be absolute (runc creates it if missing)."""
    cwd = cwd or "/"
    if not cwd.startswith("/"):
        raise InvalidArgument(f"the working directory '{cwd}' is invalid, it needs to be an absolute path")

    def opt(spec: dict) -> None:
        spec["process"]["cwd"] = cwd

    return opt


def with_tty(tty: bool, *, height: int = DEFAULT_CONSOLE[0], width: int = DEFAULT_CONSOLE[1]) -> SpecOpt:
    """Give the process a terminal (conmon's ``-t`` must agree) of the first size height x width.

    Without ``consoleSize`` the PTY starts at 0x0 and ``stty size`` fails (notes/conmon.md §1).
    Adds ``TERM=xterm`` unless the environment sets TERM, as Docker does.
    """

    def opt(spec: dict) -> None:
        process = spec["process"]
        process["terminal"] = bool(tty)
        if tty:
            process["consoleSize"] = {"height": int(height), "width": int(width)}
            if env_value(process["env"], "TERM") is None:
                process["env"].append("TERM=xterm")
        else:
            process.pop("consoleSize", None)

    return opt


#
# Users
#


@dataclass
class ExecUser:
    """A user resolved against a rootfs: what ``process.user`` gets, plus the home directory."""

    uid: int
    gid: int
    additional_gids: list[int] = field(default_factory=list)
    home: str = "/"

    def to_spec(self) -> dict:
        user = {"uid": self.uid, "gid": self.gid}
        if self.additional_gids:
            user["additionalGids"] = list(self.additional_gids)
        return user


def with_user(rootfs: str, user: str) -> SpecOpt:
    """Run as ``user`` (``name``, ``uid``, ``name:group``, ``uid:gid``...), resolved in ``rootfs``.

    Names are looked up in the rootfs's /etc/passwd and /etc/group (see ``resolve_user``). Sets
    HOME from the passwd entry unless the environment already has it, so apply after ``with_env``.
    """
    resolved = resolve_user(rootfs, user)

    def opt(spec: dict) -> None:
        spec["process"]["user"] = resolved.to_spec()
        if env_value(spec["process"]["env"], "HOME") is None:
            spec["process"]["env"].append(f"HOME={resolved.home}")

    return opt


def resolve_user(rootfs: str, user: str) -> ExecUser:
    """Resolve a Docker ``--user`` value against the rootfs, as runc's libcontainer/user does.

    - ``""`` is root. A name must be in /etc/passwd; a number need not be (then gid 0, home "/").
    - ``user:group``: the group by name (in /etc/group) or number; without it, the passwd gid.
    - Supplementary groups: the /etc/group entries listing the user's name, when no group is given.

    Raises InvalidArgument, in runc's words, for a name that is not found.
    """
    user = (user or "").strip()
    user_part, _, group_part = user.partition(":")
    passwd = _parse_colon_file(read_file_in_root(rootfs, "/etc/passwd"), 7)
    groups = _parse_colon_file(read_file_in_root(rootfs, "/etc/group"), 4)

    entry = None
    if user_part == "":
        user_part = "0"
    if user_part.isdigit():
        uid = int(user_part)
        entry = next((e for e in passwd if _int(e[2]) == uid), None)
    else:
        entry = next((e for e in passwd if e[0] == user_part), None)
        if entry is None:
            raise InvalidArgument(f"unable to find user {user_part}: no matching entries in passwd file")
        uid = _int(entry[2])
    if uid is None or uid > 0xFFFFFFFE:
        raise InvalidArgument(f"invalid user id in {user!r}")
    gid = _int(entry[3]) if entry is not None else 0
    home = entry[5] if entry is not None and entry[5] else "/"

    additional: list[int] = []
    if group_part:
        if group_part.isdigit():
            gid = int(group_part)
        else:
            group = next((g for g in groups if g[0] == group_part), None)
            if group is None:
                raise InvalidArgument(f"unable to find group {group_part}: no matching entries in group file")
            gid = _int(group[2])
    elif entry is not None:
        for g in groups:
            members = [m.strip() for m in g[3].split(",") if m.strip()]
            g_id = _int(g[2])
            if entry[0] in members and g_id is not None and g_id != gid and g_id not in additional:
                additional.append(g_id)
    if gid is None or gid > 0xFFFFFFFE:
        raise InvalidArgument(f"invalid group id in {user!r}")
    return ExecUser(uid=uid, gid=gid, additional_gids=additional, home=home)


def _parse_colon_file(data: bytes | None, fields: int) -> list[list[str]]:
    """Split /etc/passwd or /etc/group into entries of ``fields`` fields (short ones padded)."""
    if not data:
        return []
    entries = []
    for raw in data.decode("utf-8", "replace").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        parts += [""] * (fields - len(parts))
        entries.append(parts[:fields])
    return entries


def _int(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


def open_in_root(root: str, path: str) -> int:
    """Open ``path`` for reading as if ``root`` were ``/``: symlinks never lead out of ``root``.

    Every component is opened relative to its parent's fd with O_NOFOLLOW; a symlink is read from
    its own fd and resolved against ``root`` (absolute targets) or its directory, ``..`` stops at
    ``root``, at most 40 links. Only a regular file is opened (a FIFO would block the caller).
    Returns an O_RDONLY fd; raises FileNotFoundError, NotADirectoryError or OSError(ELOOP).
    """
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    stack = [root_fd]
    parts = deque(p for p in path.split("/") if p not in ("", "."))
    links = 0
    try:
        while parts:
            name = parts.popleft()
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            fd = os.open(name, flags, dir_fd=stack[-1])
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode):
                target = os.readlink("", dir_fd=fd)
                os.close(fd)
                links += 1
                if links > _MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                parts.extendleft(reversed([p for p in target.split("/") if p not in ("", ".")]))
                continue
            if parts:
                if not stat.S_ISDIR(mode):
                    os.close(fd)
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
                stack.append(fd)
                continue
            try:
                if not stat.S_ISREG(mode):
                    raise OSError(errno.EINVAL, "not a regular file", path)
                return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
            finally:
                os.close(fd)
        raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    finally:
        for fd in stack:
            os.close(fd)


def read_file_in_root(root: str, path: str, limit: int = MAX_ETC_FILE) -> bytes | None:
    """Return the content of ``path`` inside ``root`` (see ``open_in_root``); None if it is missing.

    A file that is not a regular file, or lies behind a non-directory, also reads as missing; a
    file larger than ``limit`` raises InvalidArgument.
    """
    try:
        fd = open_in_root(root, path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EISDIR):
            return None
        raise
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise InvalidArgument(f"{path} in the image is larger than {limit} bytes")
    return data


#
# Filesystem
#


def with_root(path: str) -> SpecOpt:
    """Use ``path`` (absolute: the overlay's merged dir) as the root filesystem."""

    def opt(spec: dict) -> None:
        spec["root"]["path"] = path

    return opt


def with_readonly_rootfs(read_only: bool = True) -> SpecOpt:
    """Mount the root filesystem read-only (``--read-only``)."""

    def opt(spec: dict) -> None:
        spec["root"]["readonly"] = bool(read_only)

    return opt


def with_mounts(mounts: Iterable[dict]) -> SpecOpt:
    """Add bind mounts ``{"source", "destination", "read_only", "propagation"?}`` after the defaults.

    Like Docker, a user mount on the same destination as a default one (say /dev/shm) replaces it,
    and mounts are sorted so that a parent is mounted before what is mounted inside it.
    """
    wanted = []
    for m in mounts:
        destination = clean_destination(m["destination"])
        options = ["rbind", m.get("propagation") or "rprivate", "ro" if m.get("read_only") else "rw"]
        wanted.append({"destination": destination, "type": "bind", "source": m["source"], "options": options})

    def opt(spec: dict) -> None:
        taken = {m["destination"] for m in wanted}
        kept = [m for m in spec["mounts"] if m["destination"] not in taken]
        spec["mounts"] = kept + sorted(wanted, key=lambda m: m["destination"].rstrip("/").count("/"))

    return opt


def clean_destination(path: str) -> str:
    """A mount destination cleaned (``/a//b/`` -> ``/a/b``); InvalidArgument if it is relative,
    has ``..`` or is ``/``."""
    if not path.startswith("/"):
        raise InvalidArgument(f"invalid mount config: the mount destination must be absolute: {path!r}")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(f"invalid mount config: the mount destination must not contain '..': {path!r}")
    clean = "/" + "/".join(parts)
    if clean == "/":
        raise InvalidArgument("invalid mount config: the destination cannot be '/'")
    return clean


def with_etc_files(*, hosts: str | None, hostname: str | None, resolv_conf: str | None,
                   read_only: bool = False) -> SpecOpt:
    """Bind-mount the container's own /etc/hosts, /etc/hostname and /etc/resolv.conf (Docker's way).

    The files live in the container's directory (written by the caller); a None one is not mounted.
    """
    files = [(hosts, "/etc/hosts"), (hostname, "/etc/hostname"), (resolv_conf, "/etc/resolv.conf")]

    def opt(spec: dict) -> None:
        for source, destination in files:
            if source is None:
                continue
            spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != destination]
            spec["mounts"].append({"destination": destination, "type": "bind", "source": source,
                                   "options": ["rbind", "rprivate", "ro" if read_only else "rw"]})

    return opt


def with_masked_paths(paths: Iterable[str] = DEFAULT_MASKED_PATHS) -> SpecOpt:
    """Hide these paths (a /dev/null bind or an empty read-only tmpfs); empty for --privileged."""
    paths = list(paths)

    def opt(spec: dict) -> None:
        spec["linux"]["maskedPaths"] = paths

    return opt


def with_readonly_paths(paths: Iterable[str] = DEFAULT_READONLY_PATHS) -> SpecOpt:
    """Make these paths read-only inside the container; empty for --privileged."""
    paths = list(paths)

    def opt(spec: dict) -> None:
        spec["linux"]["readonlyPaths"] = paths

    return opt


#
# Identity and namespaces
#


def with_hostname(hostname: str) -> SpecOpt:
    """Set the UTS hostname."""

    def opt(spec: dict) -> None:
        spec["hostname"] = hostname

    return opt


def with_namespaces(*, network: str | None = None) -> SpecOpt:
    """Choose the network namespace: None a new one (runc brings lo up), ``"host"`` the host's,
    or the path of a prepared one (``/var/run/netns/x``, ``/proc/<pid>/ns/net``) to join.

    The pid, ipc, uts and mount namespaces are always new.
    """

    def opt(spec: dict) -> None:
        namespaces = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != "network"]
        if network is None:
            namespaces.append({"type": "network"})
        elif network != "host":
            namespaces.append({"type": "network", "path": network})
        spec["linux"]["namespaces"] = namespaces

    return opt


def with_cgroups_path(path: str) -> SpecOpt:
    """Put the container in this cgroup (absolute: ``/berth/<id>`` in every hierarchy)."""

    def opt(spec: dict) -> None:
        spec["linux"]["cgroupsPath"] = path

    return opt


#
# Privileges
#


def normalise_capabilities(names: Iterable[str]) -> list[str]:
    """``net_admin`` / ``NET_ADMIN`` / ``CAP_NET_ADMIN`` -> ``CAP_NET_ADMIN``; ``ALL`` stays ``ALL``.

    Raises InvalidArgument for a name the kernel does not know, in Docker's words.
    """
    result = []
    for name in names:
        upper = str(name).strip().upper()
        if upper == "ALL":
            result.append("ALL")
            continue
        cap = upper if upper.startswith("CAP_") else f"CAP_{upper}"
        if cap not in ALL_CAPABILITIES:
            raise InvalidArgument(f'unknown capability: "{cap}"')
        result.append(cap)
    return result


def host_capabilities() -> list[str]:
    """The capabilities in this process's bounding set: a container can get no others."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapBnd:"):
                    mask = int(line.split()[1], 16)
                    return [c for i, c in enumerate(ALL_CAPABILITIES) if mask & (1 << i)]
    except OSError:
        pass
    return list(ALL_CAPABILITIES)


def effective_capabilities(cap_add: Iterable[str] = (), cap_drop: Iterable[str] = (),
                           privileged: bool = False) -> list[str]:
    """The capability set Docker gives for ``--cap-add``/``--cap-drop``/``--privileged``.

    Docker's rules (moby oci/caps.TweakCapabilities): privileged gets every capability; ``--cap-drop
    ALL`` starts from none; ``--cap-add ALL`` takes every capability except the ones dropped by name;
    otherwise the defaults plus the added minus the dropped. "Every capability" is the ones this
    process has (no CAP_SYS_RESOURCE on some hosts): runc cannot grant more.
    """
    adds, drops = normalise_capabilities(cap_add), normalise_capabilities(cap_drop)
    every = host_capabilities()
    if privileged:
        return every
    if "ALL" in adds:
        caps = [c for c in every if c not in drops]
    else:
        caps = [] if "ALL" in drops else [c for c in DEFAULT_CAPABILITIES if c not in drops]
        caps += [c for c in adds if c not in caps and c in every]
    return caps


def _capability_sets(caps: list[str]) -> dict:
    # Docker leaves the inheritable and ambient sets empty (CVE-2022-24769).
    return {"bounding": list(caps), "effective": list(caps), "permitted": list(caps)}


def with_capabilities(cap_add: Iterable[str] = (), cap_drop: Iterable[str] = (),
                      privileged: bool = False) -> SpecOpt:
    """Set the capability sets (see ``effective_capabilities``)."""
    caps = effective_capabilities(cap_add, cap_drop, privileged)

    def opt(spec: dict) -> None:
        spec["process"]["capabilities"] = _capability_sets(caps)

    return opt


def with_no_new_privileges(enabled: bool = True) -> SpecOpt:
    """Forbid gaining privileges through setuid binaries or file capabilities (PR_SET_NO_NEW_PRIVS)."""

    def opt(spec: dict) -> None:
        spec["process"]["noNewPrivileges"] = bool(enabled)

    return opt


def with_privileged_devices() -> SpecOpt:
    """--privileged: allow every device in the devices cgroup and mount /sys read-write.

    Host device nodes are not copied into /dev (Docker does); the container sees runc's defaults.
    """

    def opt(spec: dict) -> None:
        spec["linux"]["resources"]["devices"] = [{"allow": True, "access": "rwm"}]
        for m in spec["mounts"]:
            if m["destination"] in ("/sys", "/sys/fs/cgroup"):
                m["options"] = [o for o in m["options"] if o != "ro"] + ["rw"]

    return opt


def with_rlimits(rlimits: dict[str, tuple[int, int]] | None = None) -> SpecOpt:
    """Set rlimits ``{"RLIMIT_NOFILE": (soft, hard)}``, each clamped to this process's hard limit.

    Default: RLIMIT_NOFILE 1048576, clamped. runc fails at start with "error setting rlimit type
    7: operation not permitted" for a hard limit above ours when we lack CAP_SYS_RESOURCE (notes
    conmon.md §1), so no limit may exceed the host's.
    """
    wanted = dict(rlimits) if rlimits else {"RLIMIT_NOFILE": (DEFAULT_NOFILE, DEFAULT_NOFILE)}
    result = []
    for name, (soft, hard) in wanted.items():
        resource_id = getattr(resource, name, None)
        if resource_id is None:
            raise InvalidArgument(f"unknown rlimit {name}")
        _, host_hard = resource.getrlimit(resource_id)
        if host_hard != resource.RLIM_INFINITY:
            hard = min(hard, host_hard)
        soft = min(soft, hard)
        result.append({"type": name, "hard": int(hard), "soft": int(soft)})

    def opt(spec: dict) -> None:
        spec["process"]["rlimits"] = result

    return opt


def with_resources(*, memory: int = 0, memory_swap: int | None = None, nano_cpus: int = 0,
                   pids_limit: int = 0) -> SpecOpt:
    """Set cgroup limits: ``memory`` bytes (swap: ``memory_swap``, Docker's default twice the memory,
    set only when the kernel accounts swap), ``nano_cpus`` (``--cpus`` x 1e9, as a CFS quota over a
    100 ms period) and ``pids_limit`` (0 or less: unlimited)."""
    if memory < 0 or nano_cpus < 0:
        raise InvalidArgument("memory and CPU limits cannot be negative")
    if memory and memory < 6 * 1024 * 1024:
        raise InvalidArgument("Minimum memory limit allowed is 6MB")
    if nano_cpus and nano_cpus < 10_000_000:
        raise InvalidArgument("Range of CPUs is from 0.01 to the number of CPUs available")

    def opt(spec: dict) -> None:
        resources = spec["linux"].setdefault("resources", {})
        if memory:
            mem = {"limit": int(memory)}
            swap = memory_swap if memory_swap is not None else 2 * memory
            if swap and swap > 0 and _swap_accounted():
                mem["swap"] = int(max(swap, memory))
            resources["memory"] = mem
        if nano_cpus:
            resources["cpu"] = {"quota": int(nano_cpus * CPU_PERIOD // 1_000_000_000), "period": CPU_PERIOD}
        if pids_limit and pids_limit > 0:
            resources["pids"] = {"limit": int(pids_limit)}

    return opt


def _swap_accounted() -> bool:
    """True when cgroups v1 memory.memsw.* exist, or the unified hierarchy is the only one."""
    return os.path.exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes") or os.path.exists(
        "/sys/fs/cgroup/cgroup.controllers"
    )


#
# Seccomp
#


def with_seccomp(profile: dict | None) -> SpecOpt:
    """Apply a seccomp profile (``default_seccomp_profile(caps)``); None runs unconfined."""

    def opt(spec: dict) -> None:
        if profile is None:
            spec["linux"].pop("seccomp", None)
        else:
            spec["linux"]["seccomp"] = profile

    return opt


def check_seccomp_support(features: dict | None, runc: str = "runc") -> None:
    """Raise EngineError unless ``runc features`` says seccomp is available.

    A runc built without libseccomp would fail each start with a less helpful message; None
    (a runc too old for ``features``) is given the benefit of the doubt.
    """
    if features is None:
        return
    seccomp = (features.get("linux") or {}).get("seccomp") or {}
    if not seccomp.get("enabled"):
        raise EngineError(
            f"the OCI runtime {runc} cannot apply seccomp profiles (it was built without libseccomp); "
            "install a runc with seccomp support, or run the container with --security-opt seccomp=unconfined"
        )


# Allowed to every container (moby's default profile, first rule). Names this libseccomp does not
# know are skipped by runc.
_SECCOMP_ALLOW = """
accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown chown32
clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64
clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2 dup3
epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old
eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate
fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr
flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate
ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake futimesat getcpu getcwd
getdents getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer
getpeername getpgid getpgrp getpid getppid getpriority getrandom getresgid getresgid32 getresuid
getresuid32 getrlimit get_robust_list getrusage getsid getsockname getsockopt get_thread_area gettid
gettimeofday getuid getuid32 getxattr inotify_add_watch inotify_init inotify_init1 inotify_rm_watch
io_cancel ioctl io_destroy io_getevents io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set
io_setup io_submit io_uring_enter io_uring_register io_uring_setup ipc kill landlock_add_rule
landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr link linkat listen listxattr
llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64 madvise map_shadow_stack membarrier
memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect
mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend
mq_timedsend_time64 mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock munlockall munmap
name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause pidfd_open
pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64
preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read
readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages
removexattr rename renameat renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending
rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64
rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam sched_get_priority_max
sched_get_priority_min sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64
sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select semctl
semget semop semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid
setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority
setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit
set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setuid32 setxattr shmat shmctl
shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask sigreturn socketcall socketpair splice
stat stat64 statfs statfs64 statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time
timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64
timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate
truncate64 ugetrlimit umask uname unlink unlinkat utime utimensat utimensat_time64 utimes vfork vmsplice
wait4 waitid waitpid write writev
ptrace process_vm_readv process_vm_writev
""".split()

# Allowed only with a capability (moby's "includes: caps" rules).
_SECCOMP_BY_CAPABILITY = {
    "CAP_SYS_ADMIN": """bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount
        mount_setattr move_mount open_tree perf_event_open quotactl quotactl_fd setdomainname sethostname
        setns syslog umount umount2 unshare""".split(),
    "CAP_SYS_BOOT": ["reboot"],
    "CAP_SYS_CHROOT": ["chroot"],
    "CAP_SYS_MODULE": ["delete_module", "init_module", "finit_module"],
    "CAP_SYS_PACCT": ["acct"],
    "CAP_SYS_PTRACE": ["kcmp", "pidfd_getfd", "process_madvise"],
    "CAP_SYS_RAWIO": ["iopl", "ioperm"],
    "CAP_SYS_TIME": ["settimeofday", "stime", "clock_settime", "clock_settime64"],
    "CAP_SYS_TTY_CONFIG": ["vhangup"],
    "CAP_SYS_NICE": ["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"],
    "CAP_SYSLOG": ["syslog"],
    "CAP_BPF": ["bpf"],
    "CAP_PERFMON": ["perf_event_open"],
    "CAP_DAC_READ_SEARCH": ["open_by_handle_at"],
}

# clone(2) flags that create namespaces: CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET.
_CLONE_NAMESPACE_FLAGS = 0x7E020000
# personality(2) values allowed: PER_LINUX, UNAME26, ADDR_NO_RANDOMIZE (and with UNAME26), query.
_PERSONALITIES = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)
_AF_VSOCK = 40
_ENOSYS = 38

_ARCHES = {
    "x86_64": ("SCMP_ARCH_X86_64", ["SCMP_ARCH_X86", "SCMP_ARCH_X32"], ["arch_prctl", "modify_ldt"]),
    "aarch64": ("SCMP_ARCH_AARCH64", ["SCMP_ARCH_ARM"],
                ["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush",
                 "set_tls"]),
    "riscv64": ("SCMP_ARCH_RISCV64", [], ["riscv_flush_icache"]),
    "s390x": ("SCMP_ARCH_S390X", ["SCMP_ARCH_S390"],
              ["s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"]),
    "ppc64le": ("SCMP_ARCH_PPC64LE", [], ["sync_file_range2", "swapcontext"]),
}
# Image architectures (as image configs name them) that run on a host through its 32-bit ABIs.
_COMPAT_IMAGE_ARCHES = {"x86_64": ("386",), "aarch64": ("arm",), "s390x": ("s390",)}


def default_seccomp_profile(capabilities: Iterable[str], machine: str | None = None, image_arch: str = "",
                            native_only: bool = False) -> dict:
    """Docker's default seccomp profile for a container with these capabilities, as an OCI
    ``linux.seccomp`` object: an allowlist, EPERM for every other syscall.

    Capability-gated syscalls (mount with CAP_SYS_ADMIN, chroot with CAP_SYS_CHROOT...) are allowed
    only when the container has the capability. Without CAP_SYS_ADMIN, clone(2) may not create
    namespaces and clone3(2) answers ENOSYS, so that libc falls back to clone(2).

    ``native_only`` (RuntimeConfig.seccomp_native_only, off by default): the host's 32-bit syscall
    ABIs (x86 and x32 beside x86_64, arm beside aarch64) stay in the filter only for an image built
    for one of them (``image_arch`` 386 or arm). runc compiles a filter per ABI at every create and
    exec (the two extra ones cost about 10 ms of each here), but then a 32-bit syscall from any
    other image kills its thread (libseccomp's default for an unlisted ABI), where Docker allows it.
    """
    caps = set(capabilities)
    machine = machine or platform.machine()
    native, sub_arches, arch_calls = _ARCHES.get(machine, _ARCHES["x86_64"])
    if native_only and image_arch not in _COMPAT_IMAGE_ARCHES.get(machine, ()):
        sub_arches = []
    allowed = list(_SECCOMP_ALLOW) + list(arch_calls)
    for cap, names in _SECCOMP_BY_CAPABILITY.items():
        if cap in caps:
            allowed += [n for n in names if n not in allowed]
    rules: list[dict] = [{"names": allowed, "action": "SCMP_ACT_ALLOW"}]
    rules.append({"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                  "args": [{"index": 0, "value": _AF_VSOCK, "op": "SCMP_CMP_NE"}]})
    for value in _PERSONALITIES:
        rules.append({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                      "args": [{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}]})
    if "CAP_SYS_ADMIN" not in caps:
        index = 1 if machine.startswith("s390") else 0
        rules.append({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                      "args": [{"index": index, "value": _CLONE_NAMESPACE_FLAGS, "valueTwo": 0,
                                "op": "SCMP_CMP_MASKED_EQ"}]})
        rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": _ENOSYS})
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.EPERM,
        "architectures": [native, *sub_arches],
        "syscalls": rules,
    }


#
# /etc files
#


def hosts_file(hostname: str = "", *, ip: str | None = None, extra_hosts: Iterable[str] = (),
               domainname: str = "", base: str | None = None) -> str:
    """The container's /etc/hosts as Docker writes it: localhost lines (or ``base``, the host's
    file for a container on the host's network), ``--add-host`` entries (``host:ip`` or
    ``host=ip``), then the container's own address and name when it has one."""
    if base is not None:
        lines = base.splitlines()
    else:
        lines = [f"{address}\t{names}" for address, names in HOSTS_HEAD]
    for entry in extra_hosts:
        # ``host:ip`` (the IP may be IPv6, so split at the first colon) or ``host=ip``.
        name, sep, address = entry.partition("=") if "=" in entry else entry.partition(":")
        if not sep or not name or not address:
            raise InvalidArgument(f"invalid argument {entry!r} for --add-host: expected host:ip")
        if address == "host-gateway":
            raise InvalidArgument("--add-host host-gateway needs a network gateway (not available yet)")
        lines.append(f"{address.strip('[]')}\t{name}")
    if ip and hostname:
        names = f"{hostname}.{domainname} {hostname}" if domainname else hostname
        lines.append(f"{ip}\t{names}")
    return "\n".join(lines) + "\n"


def resolv_conf(host_resolv_conf: bytes | None, *, dns: Iterable[str] = (), dns_search: Iterable[str] = (),
                dns_options: Iterable[str] = (), host_network: bool = False, embedded: str | None = None) -> str:
    """The container's /etc/resolv.conf, Docker's way.

    From the host's file: with the host's network, as is; otherwise without nameservers on
    loopback (unreachable from another netns), falling back to Google's when none is left.
    ``dns``/``dns_search``/``dns_options`` replace the corresponding host lines. ``embedded``: the
    address of the embedded DNS of the container's user-defined network, its only nameserver
    (with ``ndots:0``, as Docker's 127.0.0.11), which relays to ``dns`` when given.
    """
    text = (host_resolv_conf or b"").decode("utf-8", "replace")
    nameservers, search, options, other = [], [], [], []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith(("#", ";")):
            continue
        if words[0] == "nameserver" and len(words) > 1:
            nameservers.append(words[1])
        elif words[0] in ("search", "domain"):
            search = words[1:]
        elif words[0] == "options":
            options += words[1:]
        else:
            other.append(line)
    dns, dns_search, dns_options = list(dns), list(dns_search), list(dns_options)
    if embedded and not host_network:
        nameservers = [embedded]  # it relays to ``dns`` when there are some
        options = [o for o in options if not o.startswith("ndots:")] + ["ndots:0"]
    elif dns:
        nameservers = dns
    elif not host_network:
        nameservers = [n for n in nameservers if not _is_loopback(n)] or list(DEFAULT_NAMESERVERS)
    if dns_search:
        search = [] if dns_search == ["."] else dns_search
    if dns_options:
        options = dns_options
    lines = [f"nameserver {n}" for n in nameservers]
    if search:
        lines.append("search " + " ".join(search))
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(other + lines) + "\n"


def _is_loopback(address: str) -> bool:
    return address.startswith("127.") or address in ("::1", "0:0:0:0:0:0:0:1")
