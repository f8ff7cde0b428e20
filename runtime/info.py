"""Facts about this host and engine, as ``docker info`` and ``docker version`` show them."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess

from .config import RuntimeConfig

ENGINE_VERSION = "0.1.0"
API_VERSION = "1.41"
MIN_API_VERSION = "1.24"


def _command_output(argv: list[str]) -> str:
    """What ``argv`` prints on stdout, or '' if it is not installed or fails to run."""
    if shutil.which(argv[0]) is None:
        return ""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def binary_version(path: str, name: str) -> dict:
    """Version and commit of ``name``'s binary at ``path`` (runc, crun, conmon: ``--version`` prints
    "<name> version X" and "commit: Y"), e.g. {'version': '1.1.5', 'commit': '...'}; empty
    strings when it is not installed. One run of ``--version`` for both."""
    out = _command_output([path, "--version"])
    version = re.search(rf"{name} version (\S+)", out)
    commit = re.search(r"commit: (\S+)", out)
    return {"version": version.group(1) if version else "", "commit": commit.group(1) if commit else ""}


def cgroup_version() -> str:
    """'2' when /sys/fs/cgroup is the unified hierarchy, else '1'."""
    return "2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "1"


def os_release() -> dict:
    """The host's /etc/os-release as a dict."""
    info = {}
    try:
        with open("/etc/os-release") as f:
            for line in f:
                key, sep, value = line.strip().partition("=")
                if sep:
                    info[key] = value.strip('"')
    except OSError:
        pass
    return info


def go_arch() -> str:
    """The host architecture in OCI/Go spelling (amd64, arm64...)."""
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)


def mem_total() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def system_info(config: RuntimeConfig) -> dict:
    """Everything the engine knows about its host, for ``docker info`` and the dashboard."""
    release = os_release()
    uname = os.uname()
    return {
        "kernel_version": uname.release,
        "operating_system": release.get("PRETTY_NAME", uname.sysname),
        "os_version": release.get("VERSION_ID", ""),
        "os_type": "linux",
        "architecture": platform.machine(),
        "go_arch": go_arch(),
        "ncpu": os.cpu_count() or 1,
        "mem_total": mem_total(),
        "hostname": uname.nodename,
        "cgroup_version": cgroup_version(),
        "cgroup_driver": "cgroupfs",
        "storage_driver": "overlay2",
        "root": config.root,
        "runc": binary_version(config.runc, "runc"),
        "crun": binary_version(config.crun, "crun"),
        "conmon": binary_version(config.conmon, "conmon"),
    }
