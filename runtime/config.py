"""RuntimeConfig: where the engine keeps its state and which binaries it drives."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RuntimeConfig:
    """Settings of one engine instance. ``root`` is owned entirely by the engine."""

    root: str = "/var/lib/berth"
    run_root: str = "/run/berth"
    runc: str = "runc"
    crun: str = "crun"
    # The OCI runtime of a container created without --runtime: "runc", "crun", or "auto" (crun
    # when it is installed and usable here, else runc: ContainerStore.default_runtime).
    default_runtime: str = "auto"
    conmon: str = "conmon"
    # Remount the host's cgroup2 hierarchy with "favordynmods" at the worker's start: moving a
    # process into a cgroup (each container's create) then skips an RCU grace period, 5 to 6 ms
    # here (runtime/cgroups.py favor_dynmods). A kernel-wide setting.
    cgroup_favor_dynmods: bool = True
    cni_plugin_dirs: tuple[str, ...] = ("/usr/lib/cni", "/opt/cni/bin")
    insecure_registries: tuple[str, ...] = field(default_factory=tuple)
    # Network reads (registries) give up after this many seconds of silence.
    net_timeout: float = 30.0
    # Seccomp filters for the host's native syscall ABI only (not x86/x32 beside x86_64, arm beside
    # aarch64) unless the image is built for a 32-bit one: ~10 ms less per runc create and exec
    # (crun loads a filter compiled once, so ~1 ms for it), but a 32-bit syscall from any other
    # image kills its thread (Docker allows them). Off by default.
    seccomp_native_only: bool = False
    # Where the embedded DNS of user-defined networks relays names it does not know ("ip" or
    # "ip:port"); empty: the host's resolv.conf nameservers.
    dns_upstreams: tuple[str, ...] = field(default_factory=tuple)

    def path(self, *parts: str) -> str:
        """Return a path under the engine root."""
        return os.path.join(self.root, *parts)
