"""A private dockerd WITH its own default bridge and iptables rules, and the removal of everything
it did to the host: for the tests that check Berth beside Docker's firewall rules
(tests/runtime/test_network_docker_rules.py) and for bench/run_bridge.py.

``DockerBridge`` makes a bridge ``<prefix><6 hex>`` on the first free /24 of ``BRIDGE_CANDIDATES``
(none overlaps a host route or Berth's subnets), remembers the host's chains, FORWARD policy and
sysctls, and ``remove()`` (after dockerd stopped) deletes the bridge, every rule naming it or its
subnet, the jumps to the ``DOCKER*`` chains that appeared meanwhile and those chains, and puts the
FORWARD policy and the sysctls back. dockerd refuses ``--bip`` with ``--bridge`` and makes no bridge
but ``docker0`` itself, hence the bridge made beforehand with its address.

When another dockerd that manages iptables runs on the host at ``remove()`` time, the new
``DOCKER*`` chains may be its own: they and the jumps to them are left (and reported), only the
rules naming our bridge or subnet go.

``PrivateDockerd`` starts ``dockerd`` with its data root, exec root, pid file and unix socket in a
directory of its own and that bridge (``--iptables=true --ip-masq=true``); ``stop()`` stops it and
unmounts what it left mounted there.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import time

# Subnets a private dockerd's bridge may get, first free one wins; none overlaps Berth's default
# bridge candidates (10.89/16, 10.91-93/16, 172.29/16), its user networks (10.90/16) or the
# 10.200-251 range the network tests pick from.
BRIDGE_CANDIDATES = ("10.252.213.0/24", "10.253.77.0/24", "172.31.213.0/24", "192.168.213.0/24",
                     "10.254.31.0/24", "172.30.213.0/24")
BERTH_SUBNETS = ("10.89.0.0/16", "10.90.0.0/16", "10.91.0.0/16", "10.92.0.0/16", "10.93.0.0/16", "172.29.0.0/16")
SYSCTLS = ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/bridge/bridge-nf-call-iptables")
TABLES = ("filter", "nat")


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60)


def _log(message: str) -> None:
    print(f"[dockerd] {message}", flush=True)


def routes() -> list[ipaddress.IPv4Network]:
    """Every IPv4 destination the host routes (all tables), default routes excluded."""
    out = []
    for line in _sh("ip", "-4", "route", "show", "table", "all").stdout.splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("local", "broadcast", "unreachable", "blackhole", "prohibit", "multicast"):
            word = line.split()[1]
        if word == "default":
            continue
        try:
            out.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            continue
    return out


def chains(table: str) -> set[str]:
    return {line.split()[1] for line in _sh("iptables", "-t", table, "-S").stdout.splitlines()
            if line.startswith("-N ")}


def forward_policy() -> str:
    for line in _sh("iptables", "-S", "FORWARD").stdout.splitlines():
        if line.startswith("-P FORWARD "):
            return line.split()[2]
    return ""


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def other_iptables_dockerds() -> list[int]:
    """Pids of running dockerds that manage iptables (not started with ``--iptables=false``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"dockerd" and b"--iptables=false" not in argv:
            pids.append(int(entry))
    return pids


class DockerBridge:
    """dockerd's default bridge, made here, and what dockerd does to the host's firewall and
    sysctls because of it; ``remove()`` undoes all of it."""

    def __init__(self, prefix: str = "bbench"):
        self.name = prefix + secrets.token_hex(3)
        taken = routes() + [ipaddress.ip_network(s) for s in BERTH_SUBNETS]
        free = [s for s in BRIDGE_CANDIDATES if not any(ipaddress.ip_network(s).overlaps(t) for t in taken)]
        if not free:
            raise RuntimeError(f"every bridge subnet candidate is routed already: {BRIDGE_CANDIDATES}")
        self.subnet = ipaddress.ip_network(free[0])
        self.gateway = f"{next(self.subnet.hosts())}/{self.subnet.prefixlen}"
        self.chains_before = {t: chains(t) for t in TABLES}
        self.policy_before = forward_policy()
        self.sysctls_before = {p: _read(p) for p in SYSCTLS}
        _sh("ip", "link", "add", self.name, "type", "bridge")
        try:
            _sh("ip", "addr", "add", self.gateway, "dev", self.name)
            _sh("ip", "link", "set", self.name, "up")
        except BaseException:
            self.remove()
            raise
        _log(f"bridge {self.name} {self.gateway}")

    def dockerd_args(self) -> tuple[str, ...]:
        return (f"--bridge={self.name}", "--iptables=true", "--ip-masq=true")

    def new_chains(self, table: str) -> set[str]:
        """The ``DOCKER*`` chains that appeared since the bridge was made (CNI chains of Berths
        running meanwhile are not dockerd's)."""
        return {c for c in chains(table) - self.chains_before[table] if c.startswith("DOCKER")}

    def _ours(self, line: str, new_chains: set[str]) -> bool:
        words = shlex.split(line)
        if self.name in words or str(self.subnet) in words:
            return True
        return "-j" in words and words[words.index("-j") + 1] in new_chains

    def remove(self) -> list[str]:
        """After dockerd stopped: delete the bridge, dockerd's rules and new chains; put the FORWARD
        policy and the sysctls back. Returns what could not be removed (or was left on purpose)."""
        left = []
        if os.path.exists(f"/sys/class/net/{self.name}"):
            _sh("ip", "link", "del", self.name, check=False)
        others = other_iptables_dockerds()
        for table in TABLES:
            new_chains = self.new_chains(table)
            if others and new_chains:
                left += [f"{table} chain {c} (another dockerd runs: pids {others})" for c in sorted(new_chains)]
                new_chains = set()
            for line in _sh("iptables", "-t", table, "-S").stdout.splitlines():
                if not line.startswith("-A "):
                    continue
                words = shlex.split(line)
                if words[1] in new_chains:
                    continue  # flushed below
                if self._ours(line, new_chains):
                    _sh("iptables", "-t", table, "-D", *words[1:], check=False)
            for chain in new_chains:
                _sh("iptables", "-t", table, "-F", chain, check=False)
            for chain in new_chains:
                if _sh("iptables", "-t", table, "-X", chain, check=False).returncode != 0:
                    left.append(f"{table} chain {chain}")
            for line in _sh("iptables", "-t", table, "-S").stdout.splitlines():
                if line.startswith("-A ") and self._ours(line, set()):
                    left.append(f"{table}: {line}")
        if self.policy_before and forward_policy() != self.policy_before:
            if others:
                left.append(f"FORWARD policy {forward_policy()} (was {self.policy_before}; another dockerd runs)")
            else:
                _sh("iptables", "-P", "FORWARD", self.policy_before, check=False)
                _log(f"FORWARD policy put back to {self.policy_before}")
        for path, value in self.sysctls_before.items():
            if value is not None and _read(path) != value:
                with open(path, "w") as f:
                    f.write(value)
                _log(f"{path} put back to {value}")
        if os.path.exists(f"/sys/class/net/{self.name}"):
            left.append(f"bridge {self.name}")
        return left


def unmount_under(path: str) -> None:
    """Lazily unmount whatever a daemon left mounted under ``path`` (deepest first)."""
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    for point in sorted(points, key=len, reverse=True):
        if point == path or point.startswith(path.rstrip("/") + "/"):
            subprocess.run(["umount", "-l", point], capture_output=True)


def stop_daemon(popen: subprocess.Popen, workdir: str) -> None:
    """SIGTERM a daemon (SIGKILL to its group after a minute), then unmount what it left under ``workdir``."""
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
    unmount_under(workdir)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 5):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class PrivateDockerd:
    """``dockerd`` on ``bridge`` with its own data, exec root and socket under ``workdir``."""

    def __init__(self, workdir: str, bridge: DockerBridge, timeout: float = 60):
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.socket = os.path.join(workdir, "docker.sock")
        self.log_path = os.path.join(workdir, "dockerd.log")
        argv = ["dockerd", "--data-root", os.path.join(workdir, "data"), "--exec-root", os.path.join(workdir, "exec"),
                "--pidfile", os.path.join(workdir, "docker.pid"), "--host", f"unix://{self.socket}",
                *bridge.dockerd_args()]
        with open(self.log_path, "wb") as logf:
            self.popen = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while not self.ping():
                if self.popen.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"dockerd did not start:\n{self.log()[-3000:]}")
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def ping(self) -> bool:
        conn = _UnixConnection(self.socket)
        try:
            conn.request("GET", "/_ping")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def api(self, method: str, path: str, body=None, *, timeout: float = 60) -> tuple[int, bytes]:
        """One Engine API request on the socket: (status, body). ``body``: bytes, or JSON-able."""
        conn = _UnixConnection(self.socket, timeout=timeout)
        try:
            headers = {}
            if body is not None and not isinstance(body, bytes):
                body, headers = json.dumps(body).encode(), {"Content-Type": "application/json"}
            elif body is not None:
                headers = {"Content-Type": "application/x-tar"}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def stop(self) -> None:
        stop_daemon(self.popen, self.workdir)


def dockerd_available() -> bool:
    return shutil.which("dockerd") is not None
