"""Reading a container's cgroup: its pids, and the numbers ``docker stats`` shows.

runc puts a container in ``/berth/<id>`` of every hierarchy (``linux.cgroupsPath``). Two layouts:

- cgroups v1 (this project's machine): one hierarchy per controller under /sys/fs/cgroup
  (``cpu``, ``cpuacct``, ``memory``, ``pids``, ``blkio``, ``freezer``...), maybe with a unified
  (v2) hierarchy without controllers at /sys/fs/cgroup/unified: "hybrid".
- cgroups v2: one unified hierarchy at /sys/fs/cgroup (it has ``cgroup.controllers``).

Nothing here writes a cgroup; the OCI runtime creates and deletes them. ``remove_dirs`` only
rmdirs what ``runc delete`` leaves behind (the shared ``/berth`` parent, or a leaf after a crash).

crun runs on a hybrid host only when the unified hierarchy has no controller ("cgroups in hybrid
mode not supported, drop all controllers from cgroupv2"). A host whose v1 mounts leave one out
(here: ``hugetlb``) offers it in the unified hierarchy instead; ``bind_v1_hierarchies`` mounts
such controllers as v1 hierarchies of their own, as systemd does on every hybrid host. And a v1
host with an empty ``unified`` directory where cgroup2 is not mounted misleads crun, which takes
it for a hierarchy and writes ``cgroup.procs`` files into the tmpfs; ``mount_unified`` mounts
cgroup2 there, as systemd does on a hybrid host (``stray_unified_dir`` tells the case).

Moving a process into a cgroup (the OCI runtime's every create and exec writes ``cgroup.procs``)
waits for an RCU grace period by default: 5 to 6 ms on this machine, the slowest step of ``crun
create`` here. ``favor_dynmods`` turns on cgroup2's ``favordynmods`` (the worker does at start), as
the kernel offers for hosts that create cgroups often; a move then takes 0.06 ms.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess

__all__ = ["CgroupPaths", "bind_v1_hierarchies", "cpu_count", "favor_dynmods", "hybrid_v2_controllers",
           "mount_unified", "network_stats", "read_stats", "remove_dirs", "stray_unified_dir",
           "system_cpu_usage"]

CGROUP_ROOT = "/sys/fs/cgroup"
_NS_PER_TICK = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
# v1's "no limit" is the largest multiple of the page size in a signed 64-bit number.
_V1_UNLIMITED = 0x7FFFFFFFFFFFF000


class CgroupPaths:
    """Where the cgroup ``path`` (e.g. ``/berth/<id>``) lives in each hierarchy of this host."""

    def __init__(self, path: str, root: str = CGROUP_ROOT):
        self.path = path.strip("/")
        self.root = root
        self.unified = os.path.exists(os.path.join(root, "cgroup.controllers"))

    def dir(self, controller: str) -> str:
        """The directory of ``controller`` (v1), or the unified one (v2)."""
        if self.unified:
            return os.path.join(self.root, self.path)
        return os.path.join(self.root, controller, self.path)

    def hierarchies(self) -> list[str]:
        """Every directory of this cgroup that may exist (every v1 hierarchy and the unified one)."""
        if self.unified:
            return [os.path.join(self.root, self.path)]
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        return [os.path.join(self.root, n, self.path) for n in names]

    def pids(self) -> list[int]:
        """The pids (as the host sees them) of every process in the cgroup; [] when it is gone."""
        for controller in ("pids", "memory", "cpu", "freezer"):
            text = _read(os.path.join(self.dir(controller), "cgroup.procs"))
            if text is not None:
                return sorted(int(p) for p in text.split())
        return []


def hybrid_v2_controllers(root: str = CGROUP_ROOT) -> list[str]:
    """The controllers that the unified hierarchy of a hybrid host (v1 hierarchies, cgroup2 at
    ``<root>/unified``) offers; [] on a v1-only or a v2 host."""
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        return []
    text = _read(os.path.join(root, "unified", "cgroup.controllers"))
    return text.split() if text else []


def stray_unified_dir(root: str = CGROUP_ROOT) -> bool:
    """True on a v1 host whose ``<root>/unified`` is a directory with no cgroup2 mounted on it."""
    unified = os.path.join(root, "unified")
    return (not os.path.exists(os.path.join(root, "cgroup.controllers")) and os.path.isdir(unified)
            and not os.path.ismount(unified))


def mount_unified(root: str = CGROUP_ROOT) -> bool:
    """Mount cgroup2 on the empty ``<root>/unified`` of a v1 host (a hybrid host then); True if it
    is mounted afterwards. A directory with anything in it is left alone."""
    unified = os.path.join(root, "unified")
    if stray_unified_dir(root) and not os.listdir(unified):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["mount", "-t", "cgroup2", "-o", "nosuid,nodev,noexec", "cgroup2", unified],
                           check=True, capture_output=True, timeout=10)
    return os.path.ismount(unified)


def bind_v1_hierarchies(controllers: list[str], root: str = CGROUP_ROOT) -> list[str]:
    """Mount each of ``controllers`` as a v1 hierarchy at ``<root>/<name>``, so the unified
    hierarchy no longer offers it; return the ones still offered there afterwards.

    The kernel moves a controller only while no cgroup of the unified hierarchy enables it
    (EBUSY otherwise); nothing is unmounted, and a controller already bound is left alone.
    """
    offered = hybrid_v2_controllers(root)
    for name in controllers:
        if name.isalnum() and name in offered:
            _bind_v1(name, root)
    return hybrid_v2_controllers(root)


def _bind_v1(name: str, root: str) -> None:
    target = os.path.join(root, name)
    made = False
    try:
        if not os.path.isdir(target):
            os.mkdir(target, 0o755)
            made = True
        subprocess.run(["mount", "-t", "cgroup", "-o", name, "cgroup", target], check=True,
                       capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        if made:
            with contextlib.suppress(OSError):
                os.rmdir(target)


FAVOR_DYNMODS = "favordynmods"


def cgroup2_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[tuple[str, list[str], list[str]]]:
    """Every cgroup2 mount of this mount namespace: (mount point, its mount options, its
    superblock options), from ``mountinfo``."""
    mounts = []
    try:
        with open(mountinfo, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split(" ")
        if "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        if len(fields) < sep + 4 or fields[sep + 1] != "cgroup2":
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])
        mounts.append((point, fields[5].split(","), fields[sep + 3].split(",")))
    return mounts


def favor_dynmods(mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Turn on the kernel's ``favordynmods`` by remounting this host's cgroup2 hierarchy with it;
    True if it is on afterwards (or was already).

    Without it, every write of a pid to ``cgroup.procs`` (in any hierarchy, v1 or v2) waits for an
    RCU grace period first: on this 2-CPU machine 5 to 6 ms of each container's create, on the
    path of every ``docker run``. The flag is one for the whole kernel, whichever cgroup2 mount
    sets it, and speeds every process that moves processes between cgroups (Docker's runc too). The
    kernel's price: forks and exits take a little longer. Since Linux 6.17 it stays on until the
    next boot. Needs Linux 6.1 and a mounted cgroup2 (a v2 host's /sys/fs/cgroup, a hybrid host's
    ``unified``): on a host without either, nothing changes and the answer is False.

    The remount repeats the mount's own options (``nsdelegate``, ``nosuid``...): a remount of
    cgroup2 resets the flags it does not name.
    """
    mounts = cgroup2_mounts(mountinfo)
    if not mounts:
        return False
    if any(FAVOR_DYNMODS in supers for _, _, supers in mounts):
        return True
    # A remount applies its ro/rw to the hierarchy itself: only one whose own ro/rw is the
    # hierarchy's (never a read-only bind of a writable one, which would become read-only).
    consistent = [m for m in mounts if ("ro" in m[1]) == ("ro" in m[2])]
    if not consistent:
        return False
    point, options, supers = consistent[0]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["mount", "-o", remount_options(options, supers), point], check=True,
                       capture_output=True, timeout=10)
    return any(FAVOR_DYNMODS in supers for _, _, supers in cgroup2_mounts(mountinfo))


def remount_options(options: list[str], supers: list[str]) -> str:
    """``mount -o`` for the remount of a cgroup2 mount with ``favordynmods``: its mount options
    (``ro`` stays ``ro``) and its superblock options, which a remount would otherwise reset."""
    wanted = ["remount"] + options + [o for o in supers if o not in ("ro", "rw")] + [FAVOR_DYNMODS]
    return ",".join(dict.fromkeys(wanted))


def remove_dirs(path: str, *, parents: bool = True, root: str = CGROUP_ROOT) -> bool:
    """rmdir the cgroup ``path`` in every hierarchy, then its now-empty parents (``/berth``).

    A cgroup that still has processes or children stays (rmdir fails with EBUSY/ENOTEMPTY).
    True when ``path`` is gone from every hierarchy.
    """
    paths = CgroupPaths(path, root)
    gone = True
    for leaf in paths.hierarchies():
        candidates = [leaf]
        if parents:
            parent = os.path.dirname(leaf)
            while parent.count("/") > root.count("/") + (0 if paths.unified else 1):
                candidates.append(parent)
                parent = os.path.dirname(parent)
        for d in candidates:
            try:
                os.rmdir(d)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError:
                gone = gone and d != leaf
                break
    return gone


def cpu_count() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except OSError:
        return os.cpu_count() or 1


def system_cpu_usage() -> int:
    """The host's CPU time in nanoseconds (the first line of /proc/stat), as Docker reports it."""
    text = _read("/proc/stat") or ""
    for line in text.splitlines():
        if line.startswith("cpu "):
            return sum(int(v) for v in line.split()[1:8]) * _NS_PER_TICK
    return 0


def read_stats(path: str, root: str = CGROUP_ROOT) -> dict:
    """The cgroup's numbers in the shape of Docker's stats ``cpu_stats``, ``memory_stats``,
    ``pids_stats`` and ``blkio_stats`` (v1 or v2 files, whichever the host has)."""
    paths = CgroupPaths(path, root)
    if paths.unified:
        return _read_v2(paths.dir(""))
    return _read_v1(paths)


def _read_v1(paths: CgroupPaths) -> dict:
    cpuacct = paths.dir("cpuacct")
    cpu = paths.dir("cpu")
    memory = paths.dir("memory")
    pids = paths.dir("pids")
    blkio = paths.dir("blkio")

    acct = _keyed(_read(os.path.join(cpuacct, "cpuacct.stat")))
    percpu = [int(v) for v in (_read(os.path.join(cpuacct, "cpuacct.usage_percpu")) or "").split()]
    throttling = _keyed(_read(os.path.join(cpu, "cpu.stat")))
    cpu_stats = {
        "cpu_usage": {
            "total_usage": _int(_read(os.path.join(cpuacct, "cpuacct.usage"))),
            "percpu_usage": percpu or None,
            "usage_in_kernelmode": acct.get("system", 0) * _NS_PER_TICK,
            "usage_in_usermode": acct.get("user", 0) * _NS_PER_TICK,
        },
        "system_cpu_usage": system_cpu_usage(),
        "online_cpus": cpu_count(),
        "throttling_data": {
            "periods": throttling.get("nr_periods", 0),
            "throttled_periods": throttling.get("nr_throttled", 0),
            "throttled_time": throttling.get("throttled_time", 0),
        },
    }

    limit = _int(_read(os.path.join(memory, "memory.limit_in_bytes")))
    if not limit or limit >= _V1_UNLIMITED:
        limit = _host_memory()
    memory_stats = {
        "usage": _int(_read(os.path.join(memory, "memory.usage_in_bytes"))),
        "max_usage": _int(_read(os.path.join(memory, "memory.max_usage_in_bytes"))),
        "stats": _keyed(_read(os.path.join(memory, "memory.stat"))),
        "failcnt": _int(_read(os.path.join(memory, "memory.failcnt"))),
        "limit": limit,
    }

    pids_stats = {"current": _int(_read(os.path.join(pids, "pids.current")))}
    pids_max = (_read(os.path.join(pids, "pids.max")) or "").strip()
    if pids_max.isdigit():
        pids_stats["limit"] = int(pids_max)

    throttle = os.path.join(blkio, "blkio.throttle")
    blkio_stats = {
        "io_service_bytes_recursive": _blkio(_read(f"{throttle}.io_service_bytes_recursive")),
        "io_serviced_recursive": _blkio(_read(f"{throttle}.io_serviced_recursive")),
        "io_queue_recursive": None,
        "io_service_time_recursive": None,
        "io_wait_time_recursive": None,
        "io_merged_recursive": None,
        "io_time_recursive": None,
        "sectors_recursive": None,
    }
    return {"cpu_stats": cpu_stats, "memory_stats": memory_stats, "pids_stats": pids_stats,
            "blkio_stats": blkio_stats}


def _read_v2(d: str) -> dict:
    cpu = _keyed(_read(os.path.join(d, "cpu.stat")))
    cpu_stats = {
        "cpu_usage": {
            "total_usage": cpu.get("usage_usec", 0) * 1000,
            "usage_in_kernelmode": cpu.get("system_usec", 0) * 1000,
            "usage_in_usermode": cpu.get("user_usec", 0) * 1000,
        },
        "system_cpu_usage": system_cpu_usage(),
        "online_cpus": cpu_count(),
        "throttling_data": {
            "periods": cpu.get("nr_periods", 0),
            "throttled_periods": cpu.get("nr_throttled", 0),
            "throttled_time": cpu.get("throttled_usec", 0) * 1000,
        },
    }
    limit_text = (_read(os.path.join(d, "memory.max")) or "max").strip()
    memory_stats = {
        "usage": _int(_read(os.path.join(d, "memory.current"))),
        "stats": _keyed(_read(os.path.join(d, "memory.stat"))),
        "limit": int(limit_text) if limit_text.isdigit() else _host_memory(),
    }
    pids_stats = {"current": _int(_read(os.path.join(d, "pids.current")))}
    pids_max = (_read(os.path.join(d, "pids.max")) or "").strip()
    if pids_max.isdigit():
        pids_stats["limit"] = int(pids_max)
    service_bytes = []
    serviced = []
    for line in (_read(os.path.join(d, "io.stat")) or "").splitlines():
        device, *pairs = line.split()
        major, _, minor = device.partition(":")
        values = dict(p.split("=", 1) for p in pairs if "=" in p)
        for op, key in (("read", "rbytes"), ("write", "wbytes")):
            service_bytes.append(_io_entry(major, minor, op, values.get(key, 0)))
        for op, key in (("read", "rios"), ("write", "wios")):
            serviced.append(_io_entry(major, minor, op, values.get(key, 0)))
    blkio_stats = {"io_service_bytes_recursive": service_bytes or None,
                   "io_serviced_recursive": serviced or None}
    return {"cpu_stats": cpu_stats, "memory_stats": memory_stats, "pids_stats": pids_stats,
            "blkio_stats": blkio_stats}


def network_stats(pid: int) -> dict | None:
    """Per-interface counters of the network namespace of ``pid`` (lo excluded), Docker's
    ``networks`` object; None when there is no interface but lo."""
    text = _read(f"/proc/{pid}/net/dev") if pid else None
    if not text:
        return None
    result = {}
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        name = name.strip()
        values = [int(v) for v in rest.split()]
        if name == "lo" or len(values) < 16:
            continue
        result[name] = {
            "rx_bytes": values[0], "rx_packets": values[1], "rx_errors": values[2], "rx_dropped": values[3],
            "tx_bytes": values[8], "tx_packets": values[9], "tx_errors": values[10], "tx_dropped": values[11],
        }
    return result or None


def _io_entry(major, minor, op: str, value) -> dict:
    return {"major": int(major), "minor": int(minor), "op": op, "value": int(value)}


def _host_memory() -> int:
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError, ProcessLookupError, PermissionError, OSError):
        return None


def _int(text: str | None) -> int:
    try:
        return int((text or "0").strip() or 0)
    except ValueError:
        return 0


def _keyed(text: str | None) -> dict[str, int]:
    result = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            result[parts[0]] = int(parts[1])
    return result


def _blkio(text: str | None) -> list[dict] | None:
    entries = []
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) != 3 or ":" not in parts[0]:
            continue
        major, _, minor = parts[0].partition(":")
        entries.append(_io_entry(major, minor, parts[1].lower(), parts[2]))
    return entries or None
