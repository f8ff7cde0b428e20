"""Container networks: Docker's ``bridge`` and user-defined bridge networks over CNI.

ContainerStore's network hook (``prepare``/``release``, plus ``hosts``, ``env``, ``settings``,
``summary_ports`` and ``knows``), and the ``docker network`` verbs (``create``, ``get``, ``list``,
``remove``, ``prune``, ``connect``, ``disconnect``). Facts behind every choice: notes/cni.md.

On disk::

    <root>/networks/<name>.json          a network, in Docker's Network shape (without Containers)
    <root>/networks/.lock                flock(2)ed while networks are created, removed or checked
    <root>/networks/endpoints/<cid>.json a container's networks (names, aliases) and, while it
                                         runs, each attachment: the exact conflist, runtimeConfig
                                         and ADD result (DEL needs them), IP, MAC; its netns path,
                                         its published ports. Written *before* each ADD, so a
                                         killed engine leaves what ``cleanup`` needs to DEL.
    <root>/networks/pool/<id>.json       a pre-networked namespace (bridge+firewall ADDed) ready
                                         for the next container on the default network;
                                         ``.adding`` while made, ``.taken`` while claimed
    <root>/networks/releasing/<cid>.<hex>.json
                                         a stopped container's attachments and netns, waiting for
                                         their CNI DEL (see ``release``); the netns stays mounted
                                         until the DEL is done; flock(2)ed while one process DELs it
    <root>/networks/releasing/.keeper    flock(2)ed (shared) by each process that keeps the pool:
                                         while anyone holds it, releases are left to its keeper
    <run_root>/netns/<id>                the namespaces (nsfs bind mounts)
    /run/berth/cni/ipam/<bridge>/        host-local leases, host-wide (one subnet per bridge)

Names: Debian's CNI plugins have no DNS plugin, so containers on a user-defined network find each
other through /etc/hosts: each member's hosts file lists the other running members (name, aliases,
short id), and is rewritten in place when a member starts, stops, connects or disconnects (Docker
uses an embedded DNS server at 127.0.0.11 instead). ``--link`` writes Docker's hosts line and env.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import re
import secrets
import subprocess
import threading
import time
import weakref
from typing import Callable, Iterator

from runtime import spec as oci_spec
from runtime.errors import AlreadyExists, EngineError, InvalidArgument, InvalidState, NotFound
from runtime.fsutil import replace_json

from . import netns as ns
from .cni import CNI, CNIError, conflist
from .links import hosts_entry, link_env, parse_link
from .ports import PortReservations, parse_key, wanted_mappings

logger = logging.getLogger(__name__)

DEFAULT_NETWORK = "bridge"
PREDEFINED = ("bridge", "host", "none")
DEFAULT_BRIDGE = "berth0"
DEFAULT_SUBNET = "10.89.0.0/16"
# Subnets tried for the default network when the host already routes the first one.
DEFAULT_CANDIDATES = ("10.89.0.0/16", "10.91.0.0/16", "10.92.0.0/16", "10.93.0.0/16", "172.29.0.0/16")
# User networks without a subnet get the first free /24 of this range.
USER_SUBNETS = "10.90.0.0/16"
IPAM_DIR = "/run/berth/cni/ipam"
_IN_MOVED_FROM = 0x00000040  # inotify: the pool keeper wakes when an entry is claimed (renamed away)
_IN_DELETE = 0x00000200
_IN_MOVED_TO = 0x00000080  # inotify: a release was queued (renamed into the releasing dir)
# The keeper's CNI work (a refill's ADD, a release's DEL: tens of ms of plugin CPU each) waits until
# the pool and the releasing dir were quiet this long, so that it does not compete with the run that
# claimed the entry (its runc create and start) for the CPUs; at most POOL_SETTLE_MAX, and not at all
# when the pool is empty (the next start would make its namespace itself).
POOL_QUIET = 0.1
POOL_SETTLE_MAX = 1.0
# How long a start right after its network's creation waits for the embedded DNS to answer there.
DNS_BIND_WAIT = 3.0
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
ISOLATION_1 = "BERTH-ISOLATION-1"
ISOLATION_2 = "BERTH-ISOLATION-2"
ACTIVE = ("created", "running", "paused", "stopping")

_iptables_lock = threading.Lock()
# Every manager of this process: a child forked from it (a Celery pool process) keeps no pool and
# holds no keeper lock (its copy of the fd is closed; the parent's lock stays held).
_MANAGERS: "weakref.WeakSet[NetworkManager]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for manager in list(_MANAGERS):
        manager._forget_keeper_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _now() -> str:
    from runtime.monitor import format_time_ns

    return format_time_ns(time.time_ns())


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _write_json(path: str, doc) -> None:
    replace_json(path, doc, indent=1)


def _read_json(path: str):
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None


def _locked_elsewhere(path: str, probe: int) -> bool:
    """Whether another open file holds a flock on ``path`` that conflicts with ``probe`` (LOCK_SH
    finds an exclusive holder, LOCK_EX any holder). The kernel drops a lock with its process; the
    probe's own lock goes at once."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False  # no file: nobody holds it
    try:
        fcntl.flock(fd, probe | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _asked_networks(asker: dict, network: str) -> list[str]:
    """The networks whose names a container asking on ``network`` gets: that one, then its other
    user-defined ones."""
    return [network] + [n for n in (asker.get("attachments") or {}) if n != network and n not in PREDEFINED]


def _relayable(server: str) -> bool:
    """A --dns server the embedded DNS can ask in the container's stead (from its network
    namespace): an IP address, v4 or v6."""
    try:
        ipaddress.ip_address(server)
    except ValueError:
        return False
    return True


def iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise EngineError(f"iptables {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def _ensure_rule(table: str, chain: str, rule: list[str], insert: bool = False) -> None:
    if iptables("-t", table, "-C", chain, *rule, check=False).returncode != 0:
        iptables("-t", table, "-I" if insert else "-A", chain, *rule)


def _ensure_chain(table: str, chain: str) -> None:
    if iptables("-t", table, "-nL", chain, check=False).returncode != 0:
        iptables("-t", table, "-N", chain, check=False)


def _delete_rule(table: str, chain: str, rule: list[str]) -> None:
    while iptables("-t", table, "-D", chain, *rule, check=False).returncode == 0:
        pass


def host_routes() -> list[tuple[ipaddress.IPv4Network, str]]:
    """The host's IPv4 routes (main table) with their device, default route excluded."""
    proc = subprocess.run(["ip", "-j", "-4", "route", "show"], capture_output=True, text=True, timeout=10)
    routes = []
    for entry in json.loads(proc.stdout or "[]"):
        dst = entry.get("dst", "")
        if dst in ("default", "") or dst.startswith("0.0.0.0"):
            continue
        with contextlib.suppress(ValueError):
            routes.append((ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False),
                           entry.get("dev", "")))
    return routes


class NetworkManager:
    """Networks of one engine root, and ContainerStore's network hook."""

    def __init__(self, config, containers=None, *, bridge: str = DEFAULT_BRIDGE, subnet: str | None = None,
                 user_subnets: str = USER_SUBNETS, bridge_prefix: str = "berth-", ipam_dir: str = IPAM_DIR):
        self.config = config
        self.containers = containers
        self.root = os.path.abspath(config.path("networks"))
        self.endpoints_dir = os.path.join(self.root, "endpoints")
        self.pool_dir = os.path.join(self.root, "pool")
        self.netns_dir = os.path.join(os.path.abspath(config.run_root), "netns")
        self.default_bridge = bridge
        self.default_subnet = subnet
        self.user_subnets = ipaddress.ip_network(user_subnets)
        self.bridge_prefix = bridge_prefix
        self.ipam_dir = ipam_dir
        self.cni = CNI(getattr(config, "cni_plugin_dirs", ("/usr/lib/cni",)))
        self.ports = PortReservations()
        self.boot_id = _boot_id()
        self.pool_size = 0
        self._pool_thread: threading.Thread | None = None
        self._pool_lock = threading.Lock()
        # The keeper: refills the pool when another process (a Celery pool process) claims from it.
        self._pool_keeper: threading.Thread | None = None
        self._pool_wake = -1
        # Held (LOCK_SH on releasing/.keeper) while this process's keeper runs the queued releases.
        self._keeper_fd = -1
        self.release_dir = os.path.join(self.root, "releasing")
        self._host_rules_done = False
        # network_id()'s answers, valid while the networks dir keeps this st_mtime_ns.
        self._id_cache: tuple[int, dict[str, str]] = (0, {})
        # summary_networks' answers: (networks dir mtime, {container id: (record, endpoint stamp, answer)}).
        self._summary_cache: tuple[int, dict] = (0, {})
        self._dns = None
        self._dns_fd = -1
        for d in (self.root, self.endpoints_dir, self.pool_dir, self.release_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)
        _MANAGERS.add(self)

    #
    # Locks and files
    #

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(os.path.join(self.root, ".lock"), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _net_path(self, name: str) -> str:
        return os.path.join(self.root, f"{name}.json")

    def _ep_path(self, cid: str) -> str:
        return os.path.join(self.endpoints_dir, f"{cid}.json")

    def _load_endpoint(self, cid: str) -> dict | None:
        return _read_json(self._ep_path(cid))

    def _endpoints(self) -> list[dict]:
        out = []
        for entry in sorted(os.listdir(self.endpoints_dir)):
            if entry.endswith(".json"):
                doc = _read_json(os.path.join(self.endpoints_dir, entry))
                if doc:
                    out.append(doc)
        return out

    #
    # Networks
    #

    def _stored(self) -> list[dict]:
        self._ensure_predefined()
        docs = []
        for entry in sorted(os.listdir(self.root)):
            if entry.endswith(".json") and not entry.startswith("."):
                doc = _read_json(os.path.join(self.root, entry))
                if doc:
                    docs.append(doc)
        return docs

    def _ensure_predefined(self) -> None:
        if all(os.path.exists(self._net_path(n)) for n in PREDEFINED):
            return
        with self._locked():
            for name, driver in (("host", "host"), ("none", "null")):
                if not os.path.exists(self._net_path(name)):
                    _write_json(self._net_path(name), self._doc(name, driver, None, None, "", False, {}))
            if not os.path.exists(self._net_path(DEFAULT_NETWORK)):
                subnet = self._choose_default_subnet()
                gateway = str(next(subnet.hosts()))
                doc = self._doc(DEFAULT_NETWORK, "bridge", subnet, gateway, self.default_bridge, False, {})
                doc["Options"].update({"com.docker.network.bridge.default_bridge": "true",
                                       "com.docker.network.bridge.enable_icc": "true",
                                       "com.docker.network.bridge.enable_ip_masquerade": "true"})
                _write_json(self._net_path(DEFAULT_NETWORK), doc)

    def _choose_default_subnet(self) -> ipaddress.IPv4Network:
        candidates = [self.default_subnet] if self.default_subnet else list(DEFAULT_CANDIDATES)
        routes = host_routes()
        for text in candidates:
            subnet = ipaddress.ip_network(text)
            if not any(r.overlaps(subnet) and dev != self.default_bridge for r, dev in routes):
                return subnet
        raise InvalidState(f"the host already routes {', '.join(candidates)}: "
                           "configure another subnet for the default bridge network")

    def _doc(self, name, driver, subnet, gateway, bridge, internal, labels) -> dict:
        config = [{"Subnet": str(subnet), "Gateway": gateway}] if subnet else []
        return {
            "Name": name, "Id": secrets.token_hex(32), "Created": _now(), "Scope": "local", "Driver": driver,
            "EnableIPv6": False, "IPAM": {"Driver": "default", "Options": None if not subnet else {},
                                          "Config": config},
            "Internal": bool(internal), "Attachable": False, "Ingress": False,
            "ConfigFrom": {"Network": ""}, "ConfigOnly": False, "Containers": {},
            "Options": {"com.docker.network.bridge.name": bridge} if bridge else {},
            "Labels": dict(labels or {}),
        }

    def _find(self, name_or_id: str) -> dict:
        key = (name_or_id or "").strip()
        docs = self._stored()
        for doc in docs:
            if doc["Name"] == key:
                return doc
        for doc in docs:
            if doc["Id"] == key:
                return doc
        matches = [d for d in docs if key and d["Id"].startswith(key)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidArgument(f"network {key} is ambiguous ({len(matches)} matches found based on ID prefix)")
        raise NotFound(f"network {key} not found")

    def network_id(self, name_or_id: str) -> str:
        """``_find(name_or_id)["Id"]``, remembered while the networks dir is unchanged: docker ps asks
        it for every container, and ``_find`` reads every network's file each time.

        Every change of a network document is a rename in that dir, so it changes the dir's mtime;
        answers are only kept when that mtime is over a second old, so two writes within one tick
        of the file system's clock cannot leave a stale answer behind.
        """
        try:
            stamp = os.stat(self.root).st_mtime_ns
        except FileNotFoundError:
            stamp = 0
        cached_stamp, ids = self._id_cache
        if stamp and stamp == cached_stamp and name_or_id in ids:
            return ids[name_or_id]
        network_id = self._find(name_or_id)["Id"]
        if stamp and time.time_ns() - stamp > 1_000_000_000:
            if stamp != cached_stamp:
                ids = {}
            ids = {**ids, name_or_id: network_id}
            self._id_cache = (stamp, ids)
        return network_id

    def knows(self, name: str) -> bool:
        try:
            doc = self._find(name)
        except (NotFound, InvalidArgument):
            return False
        return doc["Driver"] == "bridge"

    def create(self, name: str, subnet: str | None = None, gateway: str | None = None, internal: bool = False,
               labels: dict | None = None, driver: str = "bridge") -> dict:
        """``docker network create``: a bridge network with its own Linux bridge and subnet."""
        if driver not in ("bridge", "", None):
            raise InvalidArgument(f"plugin \"{driver}\" not found")
        if not name or not NAME_RE.match(name):
            raise InvalidArgument(f"invalid network name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        self._ensure_predefined()
        with self._locked():
            docs = [d for d in (_read_json(os.path.join(self.root, e)) for e in os.listdir(self.root)
                                if e.endswith(".json")) if d]
            if any(d["Name"] == name for d in docs):
                raise AlreadyExists(f"network with name {name} already exists")
            used = [ipaddress.ip_network(c["Subnet"]) for d in docs for c in d["IPAM"]["Config"]]
            routes = host_routes()
            if subnet:
                try:
                    net = ipaddress.ip_network(subnet, strict=False)
                except ValueError:
                    raise InvalidArgument(f"invalid subnet {subnet!r}") from None
                if net.version != 4:
                    raise InvalidArgument("only IPv4 subnets are supported")
                if net.prefixlen > 30:
                    raise InvalidArgument(f"subnet {net} is too small")
                if any(net.overlaps(u) for u in used) or any(net.overlaps(r) for r, _ in routes):
                    raise AlreadyExists("Pool overlaps with other one on this address space")
            else:
                net = next((c for c in self.user_subnets.subnets(new_prefix=24)
                            if not any(c.overlaps(u) for u in used) and not any(c.overlaps(r) for r, _ in routes)),
                           None)
                if net is None:
                    raise InvalidState("could not find an available, non-overlapping IPv4 address pool")
            if gateway:
                try:
                    gw = ipaddress.ip_address(gateway)
                except ValueError:
                    raise InvalidArgument(f"invalid gateway {gateway!r}") from None
                if gw not in net or gw in (net.network_address, net.broadcast_address):
                    raise InvalidArgument(f"gateway {gateway} is not in subnet {net}")
            else:
                gw = next(net.hosts())
            doc = self._doc(name, "bridge", net, str(gw), "", internal, labels)
            doc["Options"]["com.docker.network.bridge.name"] = (self.bridge_prefix + doc["Id"])[:15]
            self._isolate(doc)
            _write_json(self._net_path(name), doc)
        return self.get(name)

    def get(self, name_or_id: str) -> dict:
        """``docker network inspect``: Docker's Network, with the running members in Containers."""
        doc = self._find(name_or_id)
        doc["Containers"] = {}
        for ep in self._endpoints():
            att = (ep.get("attachments") or {}).get(doc["Name"])
            if att and att.get("ip"):
                doc["Containers"][ep["id"]] = {
                    "Name": ep.get("name", ""), "EndpointID": att["endpoint_id"], "MacAddress": att.get("mac", ""),
                    "IPv4Address": f"{att['ip']}/{att['prefix']}", "IPv6Address": ""}
        return doc

    def list(self, filters: dict | None = None) -> list[dict]:
        """``docker network ls``: filters ``name`` (substring), ``id`` (prefix), ``label`` (``k`` or
        ``k=v``), ``driver``, ``type`` (``custom``/``builtin``); each a value or a list of values."""
        def values(key):
            v = (filters or {}).get(key)
            if v is None:
                return []
            if isinstance(v, dict):  # the API's {"value": true}
                return [k for k, on in v.items() if on]
            return [v] if isinstance(v, str) else list(v)

        out = []
        for doc in self._stored():
            doc = self.get(doc["Id"])
            if values("name") and not any(n in doc["Name"] for n in values("name")):
                continue
            if values("id") and not any(doc["Id"].startswith(i) for i in values("id")):
                continue
            if values("driver") and doc["Driver"] not in values("driver"):
                continue
            kinds = values("type")
            if kinds and ("builtin" if doc["Name"] in PREDEFINED else "custom") not in kinds:
                continue
            ok = True
            for label in values("label"):
                key, sep, value = label.partition("=")
                if key not in doc["Labels"] or (sep and doc["Labels"][key] != value):
                    ok = False
            if ok:
                out.append(doc)
        return out

    def _active(self, name: str) -> list[str]:
        return [ep["id"] for ep in self._endpoints() if name in (ep.get("attachments") or {})]

    def remove(self, name_or_id: str) -> None:
        """``docker network rm``: refused for the predefined networks and while containers use it."""
        doc = self._find(name_or_id)
        if doc["Name"] in PREDEFINED:
            raise InvalidState(f"{doc['Name']} is a pre-defined network and cannot be removed")
        with self._locked():
            # Stopped members' queued DELs need the bridge and the lease dir: they go first.
            self.finish_releases(network=doc["Name"])
            if self._active(doc["Name"]):
                raise InvalidState(f"error while removing network: network {doc['Name']} id {doc['Id']} "
                                   "has active endpoints")
            self._unisolate(doc)
            bridge = doc["Options"].get("com.docker.network.bridge.name", "")
            if bridge and os.path.exists(f"/sys/class/net/{bridge}"):
                subprocess.run(["ip", "link", "del", bridge], capture_output=True, timeout=30)
            lease_dir = os.path.join(self.ipam_dir, bridge)
            if bridge and os.path.isdir(lease_dir):
                import shutil

                shutil.rmtree(lease_dir, ignore_errors=True)
            os.unlink(self._net_path(doc["Name"]))

    def prune(self, filters: dict | None = None) -> dict:
        """``docker network prune``: remove the user networks no running container uses."""
        deleted = []
        for doc in self.list(filters):
            if doc["Name"] in PREDEFINED or doc["Containers"]:
                continue
            try:
                self.remove(doc["Id"])
                deleted.append(doc["Name"])
            except (InvalidState, NotFound):
                continue
        return {"NetworksDeleted": deleted or None}

    def teardown(self) -> None:
        """Remove every network of this root from the host (bridges, isolation rules, leases,
        the pool), the default one too; for tests and uninstall. Containers must be gone first."""
        self.stop_pool()
        for doc in self._stored():
            if doc["Driver"] != "bridge":
                continue
            if self._active(doc["Name"]):
                raise InvalidState(f"network {doc['Name']} still has active endpoints")
            self._unisolate(doc)
            bridge = self._bridge(doc)
            if os.path.exists(f"/sys/class/net/{bridge}"):
                subprocess.run(["ip", "link", "del", bridge], capture_output=True, timeout=30)
            import shutil

            shutil.rmtree(os.path.join(self.ipam_dir, bridge), ignore_errors=True)

    #
    # iptables: network isolation, the localhost guard
    #

    def _bridge(self, doc: dict) -> str:
        return doc["Options"].get("com.docker.network.bridge.name", "")

    def _isolation_rules(self, doc: dict) -> list[tuple[str, list[str]]]:
        bridge = self._bridge(doc)
        if doc.get("Internal"):
            return [(ISOLATION_1, ["-i", bridge, "!", "-o", bridge, "-j", "DROP"]),
                    (ISOLATION_1, ["-o", bridge, "!", "-i", bridge, "-j", "DROP"])]
        return [(ISOLATION_1, ["-i", bridge, "!", "-o", bridge, "-j", ISOLATION_2]),
                (ISOLATION_2, ["-o", bridge, "-j", "DROP"])]

    def _isolate(self, doc: dict) -> None:
        """Docker's two-stage isolation in the firewall plugin's admin chain (CNI-ADMIN): traffic
        from one Berth bridge to another is dropped; an internal network reaches only itself."""
        with _iptables_lock:
            for chain in ("CNI-ADMIN", ISOLATION_1, ISOLATION_2):
                _ensure_chain("filter", chain)
            _ensure_rule("filter", "CNI-ADMIN", ["-j", ISOLATION_1])
            for chain, rule in self._isolation_rules(doc):
                _ensure_rule("filter", chain, rule, insert=chain == ISOLATION_1 and "DROP" in rule)

    def _unisolate(self, doc: dict) -> None:
        with _iptables_lock:
            for chain, rule in self._isolation_rules(doc):
                _delete_rule("filter", chain, rule)

    def _host_rules(self) -> None:
        """Once per process: the default network's isolation, and kube-proxy's guard against
        route_localnet (notes §3.5): a packet to 127/8 that did not come from 127/8 and was not
        DNATed (a published port) is dropped, so containers cannot reach loopback-only services."""
        if self._host_rules_done:
            return
        self._isolate(self._find(DEFAULT_NETWORK))
        with _iptables_lock:
            _ensure_rule("filter", "INPUT", ["-d", "127.0.0.0/8", "!", "-s", "127.0.0.0/8", "-m", "conntrack",
                                             "!", "--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "DROP"],
                         insert=True)
        self._host_rules_done = True

    #
    # The hook
    #

    def _members(self, record) -> dict:
        ep = self._load_endpoint(record.id)
        mode = record.config.network_mode or DEFAULT_NETWORK
        if ep is None:
            member = {"aliases": list(getattr(record.config, "network_aliases", None) or [])}
            if getattr(record.config, "ipv4_address", ""):
                member["ip"] = record.config.ipv4_address
            nets = {} if mode in ("host", "none") or mode.startswith("container:") else {mode: member}
            ep = {"id": record.id, "name": record.name, "networks": nets, "attachments": {}, "netns": "",
                  "ports": [], "boot_id": ""}
        ep["name"] = record.name
        return ep

    def _conflist(self, doc: dict, primary: bool) -> dict:
        bridge = self._bridge(doc)
        config = doc["IPAM"]["Config"][0]
        return conflist(bridge, bridge, config["Subnet"], config["Gateway"], self.ipam_dir,
                        default_route=primary and not doc.get("Internal"), ip_masq=not doc.get("Internal"))

    def prepare(self, record) -> str | None:
        """Before ``runc create``: the netns to join. For a bridge network: reserve the published
        host ports (refused here, before anything starts, when taken), take a namespace from the
        pool or make one, CNI ADD each network of the container (eth0, eth1...)."""
        mode = record.config.network_mode or DEFAULT_NETWORK
        if mode == "host":
            return "host"
        if mode.startswith("container:"):
            other = self.containers.get(mode.partition(":")[2])
            if other.state.value not in ("running", "paused") or not other.pid:
                raise InvalidState(f"cannot join network of a non running container: {other.id}")
            return f"/proc/{other.pid}/ns/net"
        if mode == "none":
            return None
        ep = self._members(record)
        if not ep["networks"]:
            return None
        if ep.get("attachments"):  # a previous run's, not released (crash): release it first
            self._detach_all(ep)
        # A previous run's queued DEL under the container's own id (not a pool id) would take
        # the new run's lease and chains with it: it runs first.
        self.finish_releases(record.id, cni_id=record.id)
        docs = {name: self._find(name) for name in ep["networks"]}
        self._host_rules()
        for name in docs:
            if name != DEFAULT_NETWORK:
                self._isolate(docs[name])
        self._check_links(record)
        cid = record.id
        primary = next(iter(docs))
        wanted = wanted_mappings(record.config.port_bindings, record.config.exposed_ports,
                                 getattr(record.config, "publish_all_ports", False))
        if docs[primary].get("Internal"):
            wanted = []
        mappings = []
        if wanted:
            taken = {(m.get("hostIP", ""), m["hostPort"], m["protocol"]) for other in self._endpoints()
                     if other["id"] != cid for m in other.get("ports") or []}
            mappings = self.ports.reserve(cid, wanted, taken)
        ep.update(ports=mappings, boot_id=self.boot_id, attachments={})
        try:
            claimed = self._claim_pool() if primary == DEFAULT_NETWORK else None
            if claimed is not None:
                ep["netns"] = claimed["netns"]
                att = claimed["attachment"]
                att["runtime_config"] = {"portMappings": mappings}
                ep["attachments"][primary] = att
                _write_json(self._ep_path(cid), ep)
                self._release_claim(claimed)
                if mappings:
                    att["result"] = self.cni.add(att["conflist"], att["runtime_config"], att["cni_id"], ep["netns"],
                                                 "eth0", prev=att["result"], only=("portmap",))
                _write_json(self._ep_path(cid), ep)
                self._refill_pool_async()
            else:
                ep["netns"] = os.path.join(self.netns_dir, cid)
                _write_json(self._ep_path(cid), ep)
                ns.create(ep["netns"])
            for index, (name, doc) in enumerate(docs.items()):
                if name in ep["attachments"]:
                    continue
                self._attach(ep, doc, f"eth{index}", {"portMappings": mappings} if index == 0 else {},
                             primary=index == 0, ip=(ep["networks"].get(name) or {}).get("ip", ""))
        except BaseException:
            self._detach_all(ep)
            self.ports.release(cid)
            raise
        self._update_peers(ep, exclude=cid)
        return ep["netns"]

    def _attach(self, ep: dict, doc: dict, ifname: str, runtime_config: dict, primary: bool, ip: str = "") -> dict:
        conf = self._conflist(doc, primary)
        att = {"cni_id": ep["id"], "ifname": ifname, "conflist": conf, "runtime_config": runtime_config,
               "result": None, "network_id": doc["Id"], "endpoint_id": secrets.token_hex(32)}
        ep["attachments"][doc["Name"]] = att
        _write_json(self._ep_path(ep["id"]), ep)  # the intent: cleanup DELs it if we die now
        try:
            # host-local takes a wanted address from CNI_ARGS (--ip).
            att["result"] = self.cni.add(conf, runtime_config, att["cni_id"], ep["netns"], ifname,
                                         args=f"IP={ip}" if ip else "")
        except CNIError as exc:
            if not (ip and "not available" in str(exc)):
                raise
            # Its last holder may be a container that just stopped, its lease still in a queued
            # release (the keeper waits for quiet): run this network's releases, then try again.
            self.finish_releases(network=doc["Name"])  # none left may mean the keeper just ran it
            self.cni.delete(conf, runtime_config, att["cni_id"], ep["netns"], ifname)  # what the failed ADD made
            try:
                att["result"] = self.cni.add(conf, runtime_config, att["cni_id"], ep["netns"], ifname, args=f"IP={ip}")
            except CNIError as again:
                if "not available" in str(again):
                    raise InvalidArgument(f"Address already in use: {ip} on network {doc['Name']}") from again
                raise
        _fill(att)
        _write_json(self._ep_path(ep["id"]), ep)
        return att

    def _detach(self, ep: dict, name: str) -> list[str]:
        att = ep["attachments"].get(name)
        if not att:
            return []
        done = set(att.get("deleted") or ())  # plugins DELeted already (portmap, by release)
        conf = att["conflist"]
        if done:
            conf = {**conf, "plugins": [p for p in conf["plugins"] if p["type"] not in done]}
        errors = self.cni.delete(conf, att.get("runtime_config") or {}, att["cni_id"], ep.get("netns", ""),
                                 att.get("ifname", "eth0"), result=att.get("result"))
        if att.get("result") is None:
            self._forget_lease(att)
        self._sweep_nat({att["cni_id"]})
        del ep["attachments"][name]
        return errors

    def _detach_all(self, ep: dict) -> list[str]:
        errors = []
        for name in reversed(list(ep.get("attachments") or {})):
            errors += self._detach(ep, name)
        if ep.get("netns"):
            ns.remove(ep["netns"])
            ep["netns"] = ""
        return errors

    def release(self, record) -> None:
        """When the container stops: its network is taken off it at once (the endpoint loses its
        attachments, namespace and ports; peers' hosts files lose it; its host ports are free: with
        published ports, portmap's DEL runs here first), and the rest of the CNI DEL (bridge,
        firewall, host-local: ~85 ms of plugin execs) is queued in ``releasing/`` for the keeper
        (the process that keeps the pool runs it in the background, see ``start_pool``). With no
        keeper in any process it runs here, as before. The queued entry is written before the
        endpoint forgets its attachments, so a crash at any point leaves one of the two for
        ``cleanup``; the namespace stays mounted until its DEL is done."""
        ep = self._load_endpoint(record.id)
        if ep is None:
            return
        had = {name: {} for name in ep.get("attachments") or {}}
        errors: list[str] = []
        queued = None
        if ep.get("attachments") or ep.get("netns"):
            if ep.get("ports"):
                errors += self._delete_portmap(ep)
            queued = self._queue_release(ep)
            ep["attachments"], ep["netns"] = {}, ""
        ep["ports"] = []
        self.ports.release(record.id)
        state = getattr(record.state, "value", record.state)
        if state == "removing":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._ep_path(record.id))
        else:
            _write_json(self._ep_path(record.id), ep)
        if had:
            self._update_peers({"attachments": had}, exclude=record.id, gone=True)
        if queued and not self._keeper_alive():
            errors += self._run_release(queued)
        if errors:
            raise EngineError("network release: " + "; ".join(errors))

    def _delete_portmap(self, ep: dict) -> list[str]:
        """portmap's DEL of each attachment that has port mappings, now: the host ports' DNAT rules
        go before their sockets are closed, so the next container may publish them at once."""
        errors = []
        for att in (ep.get("attachments") or {}).values():
            if not (att.get("runtime_config") or {}).get("portMappings") or "portmap" in (att.get("deleted") or ()):
                continue
            conf = {**att["conflist"], "plugins": [p for p in att["conflist"]["plugins"] if p["type"] == "portmap"]}
            errors += self.cni.delete(conf, att["runtime_config"], att["cni_id"], ep.get("netns", ""),
                                      att.get("ifname", "eth0"), result=att.get("result"))
            att["deleted"] = [*(att.get("deleted") or ()), "portmap"]
        return errors

    #
    # Queued releases (the CNI DEL off the container's exit path)
    #

    def _queue_release(self, ep: dict) -> str:
        doc = {"id": ep["id"], "attachments": ep.get("attachments") or {}, "netns": ep.get("netns", ""),
               "boot_id": ep.get("boot_id", ""), "queued": time.time()}
        path = os.path.join(self.release_dir, f"{ep['id']}.{secrets.token_hex(4)}.json")
        _write_json(path, doc)
        return path

    def _pending(self, cid: str | None = None) -> list[str]:
        """Queued releases (all, or those of container ``cid``), oldest first."""
        try:
            names = os.listdir(self.release_dir)
        except FileNotFoundError:
            return []
        paths = [os.path.join(self.release_dir, n) for n in names
                 if n.endswith(".json") and not n.startswith(".") and (cid is None or n.startswith(cid + "."))]
        stamps = {}
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                stamps[path] = os.stat(path).st_mtime_ns
        return sorted(stamps, key=stamps.get)

    def _run_release(self, path: str) -> list[str]:
        """DEL a queued release and unmount its namespace, unless another process did or does it
        (each entry is flock()ed while DELed; a waiter finds it unlinked). Returns the errors."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return []
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink == 0:
                return []  # done by whoever held the lock
            with os.fdopen(os.dup(fd), "rb") as f:
                try:
                    doc = json.load(f)
                except ValueError:
                    doc = None
            errors = []
            if doc:
                try:
                    errors = self._detach_all(doc)
                except Exception as exc:  # noqa: BLE001 - an entry is tried once; cleanup sweeps the rest
                    errors = [str(exc)]
                if errors:
                    logger.warning("network release of %s: %s", doc.get("id"), "; ".join(errors))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return errors
        finally:
            os.close(fd)

    def finish_releases(self, cid: str | None = None, network: str | None = None,
                        cni_id: str | None = None) -> int:
        """Run the queued releases now (all; or those of container ``cid``; or those with an
        attachment on ``network`` / with CNI id ``cni_id``), waiting for one another process is
        running. Returns how many were run here."""
        done = 0
        for path in self._pending(cid):
            if network is not None or cni_id is not None:
                doc = _read_json(path) or {}
                atts = (doc.get("attachments") or {})
                if network is not None and network not in atts:
                    continue
                if cni_id is not None and not any(a.get("cni_id") == cni_id for a in atts.values()):
                    continue
            if os.path.exists(path):
                self._run_release(path)
                done += 1
        return done

    def _keeper_alive(self) -> bool:
        """Whether some process keeps the pool and so runs the queued releases (it holds a shared
        flock on ``releasing/.keeper``; the kernel drops it when that process dies)."""
        if self._keeper_fd >= 0:
            return True
        return _locked_elsewhere(os.path.join(self.release_dir, ".keeper"), fcntl.LOCK_EX)

    def forget(self, cid: str) -> None:
        """Drop the network memberships of a removed container."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._ep_path(cid))

    #
    # Connect and disconnect
    #

    def check_address(self, network: str, address: str) -> None:
        """Refuse (InvalidArgument, in Docker's words) a fixed address the network cannot give."""
        doc = self._find(network)
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            raise InvalidArgument(f"invalid IPv4 address: {address}") from None
        config = doc["IPAM"]["Config"][0]
        subnet = ipaddress.IPv4Network(config["Subnet"], strict=False)
        if ip not in subnet:
            raise InvalidArgument(f"Invalid address {address}: It does not belong to any of this network's subnets")
        if ip in (subnet.network_address, subnet.broadcast_address) or address == config.get("Gateway"):
            raise InvalidArgument(f"Address {address} is not available on network {doc['Name']}")

    def connect(self, network: str, container: str, aliases: list[str] | None = None, ip: str = "") -> None:
        """``docker network connect [--alias] [--ip]``: the container joins the network (at once if it
        runs: a new interface ethN; at its next start otherwise)."""
        doc = self._find(network)
        if doc["Driver"] != "bridge":
            raise InvalidArgument(f"container cannot be connected to network {doc['Name']} ({doc['Driver']})")
        check_endpoint_options(doc["Name"], aliases, ip)
        if ip:
            self.check_address(doc["Name"], ip)
        record = self.containers.get(container)
        mode = record.config.network_mode or DEFAULT_NETWORK
        if mode in ("host", "none") or mode.startswith("container:"):
            raise InvalidArgument(f"container sharing network namespace with another container or host "
                                  f"cannot be connected to any other network ({mode})")
        with self.containers._locked(record.id) as record:
            self.finish_releases(record.id)  # a previous run's DEL under the same CNI id goes first
            ep = self._members(record)
            if doc["Name"] in ep["networks"]:
                raise AlreadyExists(f"endpoint with name {record.name} already exists in network {doc['Name']}")
            ep["networks"][doc["Name"]] = {"aliases": list(aliases or []), **({"ip": ip} if ip else {})}
            running = record.state.value in ACTIVE and ep.get("netns") and ns.is_live(ep["netns"])
            _write_json(self._ep_path(record.id), ep)
            if running:
                self._isolate(doc)
                ifnames = {a.get("ifname") for a in ep["attachments"].values()}
                index = next(i for i in range(64) if f"eth{i}" not in ifnames)
                try:
                    self._attach(ep, doc, f"eth{index}", {}, primary=not ep["attachments"], ip=ip)
                except BaseException:
                    self._detach(ep, doc["Name"])
                    del ep["networks"][doc["Name"]]
                    _write_json(self._ep_path(record.id), ep)
                    raise
                self._rewrite_hosts(record.id)
                self._rewrite_resolv(record.id)
                self._update_peers(ep, exclude=record.id)

    def disconnect(self, network: str, container: str, force: bool = False) -> None:
        """``docker network disconnect``: the container leaves the network (its interface goes now)."""
        doc = self._find(network)
        try:
            record = self.containers.get(container)
        except NotFound:
            if not force:
                raise
            for ep in self._endpoints():
                if ep.get("name") == container.lstrip("/") or ep["id"] == container:
                    self.finish_releases(ep["id"])
                    self._detach(ep, doc["Name"])
                    ep["networks"].pop(doc["Name"], None)
                    _write_json(self._ep_path(ep["id"]), ep)
            return
        with self.containers._locked(record.id) as record:
            self.finish_releases(record.id)
            ep = self._members(record)
            if doc["Name"] not in ep["networks"]:
                raise InvalidState(f"container {record.id} is not connected to network {doc['Name']}")
            errors = self._detach(ep, doc["Name"])
            del ep["networks"][doc["Name"]]
            _write_json(self._ep_path(record.id), ep)
        self._rewrite_hosts(record.id)
        self._rewrite_resolv(record.id)
        self._update_peers({**ep, "attachments": {doc["Name"]: {}}}, exclude=record.id, gone=True)
        if errors and not force:
            raise EngineError("network disconnect: " + "; ".join(errors))

    #
    # /etc/hosts, env, inspect
    #

    def address(self, record) -> str | None:
        ep = self._load_endpoint(record.id)
        for att in (ep or {}).get("attachments", {}).values():
            if att.get("ip"):
                return att["ip"]
        return None

    def _check_links(self, record) -> None:
        for text in record.config.links or []:
            name, alias = parse_link(text)
            other = self.containers.get(name)
            if other.state.value not in ("running", "paused"):
                raise InvalidState(f"Cannot link to a non running container: /{other.name} AS /{record.name}/{alias}")

    def _links(self, record) -> list[tuple[str, object, str]]:
        out = []
        for text in record.config.links or []:
            name, alias = parse_link(text)
            with contextlib.suppress(NotFound):
                other = self.containers.get(name, sync=False)
                ip = self.address(other)
                if ip:
                    out.append((alias, other, ip))
        return out

    def hosts(self, record) -> str | None:
        """The container's /etc/hosts: Docker's head, --add-host entries (``host-gateway`` is the
        network's gateway), links, the running members of its user-defined networks, itself."""
        mode = record.config.network_mode or DEFAULT_NETWORK
        if mode in ("host", "none") or mode.startswith("container:"):
            return None
        ep = self._load_endpoint(record.id) or {}
        atts = ep.get("attachments") or {}
        gateway = next((a.get("gateway") for a in atts.values() if a.get("gateway")), "")
        extra = []
        for entry in record.config.extra_hosts or []:
            name, sep, value = entry.partition("=") if "=" in entry else entry.partition(":")
            if value == "host-gateway":
                if not gateway:
                    raise InvalidArgument("--add-host host-gateway: the container has no network gateway")
                entry = f"{name}:{gateway}"
            extra.append(entry)
        for alias, other, ip in self._links(record):
            extra.append(hosts_entry(ip, alias, other.id[:12], other.name))
        seen = set()
        for name in atts:
            if name == DEFAULT_NETWORK:
                continue
            for peer in self._endpoints():
                peer_att = (peer.get("attachments") or {}).get(name)
                if peer["id"] == record.id or not peer_att or not peer_att.get("ip") or peer["id"] in seen:
                    continue
                seen.add(peer["id"])
                aliases = (peer.get("networks", {}).get(name) or {}).get("aliases") or []
                extra.append(hosts_entry(peer_att["ip"], peer.get("name", ""), *aliases, peer["id"][:12]))
        own_aliases = [a for n in atts if n != DEFAULT_NETWORK
                       for a in (ep.get("networks", {}).get(n) or {}).get("aliases") or []]
        hostname = record.config.hostname
        text = oci_spec.hosts_file(hostname, ip=self.address(record), extra_hosts=extra,
                                   domainname=record.config.domainname)
        if own_aliases and self.address(record):
            text = text.rstrip("\n") + " " + " ".join(dict.fromkeys(own_aliases)) + "\n"
        return text

    #
    # The embedded DNS (runtime/network/dns.py)
    #

    def start_dns(self) -> None:
        """Answer DNS on every user-defined network's gateway from this process (the worker's)."""
        from .dns import DnsServer

        if self._dns is not None:
            return
        fd = os.open(os.path.join(self.root, ".dns"), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            logger.warning("dns: another process answers for %s already", self.root)
            return
        self._dns_fd = fd
        self._dns = DnsServer(self._dns_networks, self.dns_answer, self._dns_upstreams,
                              on_bound=self._dns_bound, watch_dir=self.root)
        self._dns.start()

    def stop_dns(self) -> None:
        dns, self._dns = self._dns, None
        if dns is not None:
            dns.stop()  # its last word (on_bound({})) drops the gateways file and the nat rules
        fd, self._dns_fd = self._dns_fd, -1
        if fd >= 0:
            os.close(fd)

    @property
    def _dns_chain(self) -> str:
        """This root's nat chain of DNS redirections (two engines on one host keep theirs apart)."""
        return "BERTH-DNS-" + hashlib.sha1(self.root.encode()).hexdigest()[:8]

    def _dns_networks(self) -> dict[str, tuple[str, str]]:
        out = {}
        for doc in self._stored():
            if doc["Name"] in PREDEFINED:
                continue
            gateway = next((c["Gateway"] for c in (doc.get("IPAM") or {}).get("Config") or [] if c.get("Gateway")), "")
            if gateway and self._bridge(doc):
                out[doc["Name"]] = (gateway, self._bridge(doc))
        return out

    def _dns_bound(self, bound: dict[str, tuple[str, int, str, int]]) -> None:
        """The DNS's sockets changed: send each bridge's ``<gateway>:53`` to its socket, and tell
        the processes writing resolv.conf which gateways answer."""
        chain = self._dns_chain
        with _iptables_lock:
            _ensure_chain("nat", chain)
            iptables("-t", "nat", "-F", chain)
            for gateway, udp_port, bridge, tcp_port in bound.values():
                for proto, port in (("udp", udp_port), ("tcp", tcp_port)):
                    iptables("-t", "nat", "-A", chain, "-i", bridge, "-d", f"{gateway}/32", "-p", proto, "--dport", "53",
                             "-j", "DNAT", "--to-destination", f"{gateway}:{port}")
            if bound:
                _ensure_rule("nat", "PREROUTING", ["-j", chain], insert=True)
            else:
                _delete_rule("nat", "PREROUTING", ["-j", chain])
                iptables("-t", "nat", "-X", chain, check=False)
        path = os.path.join(self.root, ".dns-gateways")
        if bound:
            _write_json(path, {"gateways": sorted(b[0] for b in bound.values())})
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _dns_upstreams(self) -> list[str]:
        from .dns import host_upstreams

        return list(getattr(self.config, "dns_upstreams", ()) or ()) or host_upstreams()

    def dns_answer(self, network: str, name: str, source: str,
                   fallback: bool = False) -> tuple[list[str], bool | list[tuple[str, str | None]]] | None:
        """What the DNS says to ``source`` asking for ``name`` on ``network``: None when no container
        there has that address (no answer); else the addresses of the running containers called
        ``name`` on the asker's user networks (their name, network alias, id or short id, also as
        ``<name>.<network>``; any case), the network asked on first, and where other names are
        relayed (``_relay_for``). With ``fallback`` (the upstreams did not know the name): the
        containers ``name`` names once a search domain of the asker's is taken off it, as busybox's
        nslookup asks ``<name>.<domain>`` only."""
        endpoints = self._endpoints()
        asker = next((ep for ep in endpoints
                      if ((ep.get("attachments") or {}).get(network) or {}).get("ip") == source), None)
        if asker is None:
            return None
        name = name.rstrip(".").lower()
        if not name:
            return [], False  # only whether the source is a member (a TCP connection): nothing to relay
        if name.endswith(".in-addr.arpa"):
            return self._dns_reverse(asker, network, name, endpoints)
        if fallback:
            names = {name[:-len(d) - 1] for d in self._search_domains(asker["id"]) if name.endswith("." + d)}
        else:
            names = {name}
        for net in _asked_networks(asker, network):
            wanted = names | {n[:-len(net) - 1] for n in names if n.endswith("." + net.lower())}
            found = []
            for ep in endpoints:
                att = (ep.get("attachments") or {}).get(net)
                if not att or not att.get("ip"):
                    continue
                aliases = (ep.get("networks", {}).get(net) or {}).get("aliases") or []
                if wanted & {ep.get("name", "").lstrip("/").lower(), ep["id"], ep["id"][:12], *(a.lower() for a in aliases)}:
                    found.append(att["ip"])
            if found:
                return found, True
        return [], self._relay_for(asker)

    def _dns_reverse(self, asker: dict, network: str, name: str,
                     endpoints: list[dict]) -> tuple[list[str], bool | list[tuple[str, str | None]]]:
        """PTR: ``<container name>.<network>`` for an address of a container on one of the asker's
        user networks (as Docker answers); another address is relayed like any other name."""
        from .dns import reverse_address

        address = reverse_address(name)
        for net in _asked_networks(asker, network):
            for ep in endpoints:
                att = (ep.get("attachments") or {}).get(net)
                if address and att and att.get("ip") == address and ep.get("name"):
                    return [f"{ep['name'].lstrip('/')}.{net}"], True
        return [], self._relay_for(asker)

    def _relay_for(self, asker: dict) -> bool | list[tuple[str, str | None]]:
        """Where the DNS relays what the asker's networks do not name: nowhere (False) when all of
        them are internal; to the asker's own ``--dns`` servers when it has some, each asked from
        the asker's network namespace (as Docker's embedded DNS does: its 127.0.0.1 is its own),
        but for a Berth gateway, which from there would be this DNS again: the host's service on
        it is asked from the host; else to the default upstreams, from the host (True)."""
        docs = self._stored()
        internal = {d["Name"]: bool(d.get("Internal")) for d in docs}
        if not any(not internal.get(n, False) for n in (asker.get("attachments") or {})):
            return False
        try:
            own = list(self.containers.get(asker["id"], sync=False).config.dns or [])
        except (NotFound, AttributeError):
            own = []
        if not own or not asker.get("netns"):
            return True
        gateways = {c.get("Gateway") for d in docs for c in (d.get("IPAM") or {}).get("Config") or []}
        return [(server, None if server in gateways else asker["netns"]) for server in own]

    def _search_domains(self, cid: str) -> list[str]:
        """The search domains of a container's resolv.conf (lower case, no trailing dot)."""
        try:
            with open(os.path.join(self.containers.root, cid, "resolv.conf")) as f:
                lines = [line.split() for line in f]
        except (OSError, AttributeError):
            return []
        domains = next((words[1:] for words in reversed(lines) if words and words[0] in ("search", "domain")), [])
        return [d.rstrip(".").lower() for d in domains if d.strip(".")]

    def nameserver(self, record) -> str | None:
        """The embedded DNS's address for the container's resolv.conf: the gateway of its first
        user-defined network, when the DNS answers there; else None (the host's resolvers)."""
        if any(not _relayable(server) for server in getattr(record.config, "dns", None) or ()):
            return None  # not an address: written as it is
        ep = self._load_endpoint(record.id) or {}
        gateways = [a.get("gateway") for n, a in (ep.get("attachments") or {}).items()
                    if n not in PREDEFINED and a.get("gateway")]
        if not gateways or not self._dns_answers():
            return None
        # A network made a moment ago: the DNS binds its gateway as soon as it sees the network's file.
        deadline = time.monotonic() + DNS_BIND_WAIT
        while True:
            bound = set((_read_json(os.path.join(self.root, ".dns-gateways")) or {}).get("gateways") or [])
            found = next((g for g in gateways if g in bound), None)
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.01)

    def _dns_answers(self) -> bool:
        """True while some process holds ``.dns`` (start_dns): the lock goes with that process."""
        return _locked_elsewhere(os.path.join(self.root, ".dns"), fcntl.LOCK_SH)

    def env(self, record) -> list[str]:
        """Docker's link variables for each ``--link``."""
        out = []
        for alias, other, ip in self._links(record):
            out += link_env(record.name, alias, ip, other.config.exposed_ports, other.config.env)
        return out

    def _rewrite_hosts(self, cid: str) -> None:
        """Rewrite a running container's hosts file *in place* (it is bind-mounted: a rename would
        leave the container on the old inode)."""
        try:
            record = self.containers.get(cid, sync=False)
        except NotFound:
            return
        if record.state.value not in ACTIVE:
            return
        path = os.path.join(self.containers.root, cid, "hosts")
        try:
            text = self.hosts(record)
        except EngineError:
            return
        if text is None or not os.path.exists(path):
            return
        with open(path, "r+") as f:
            f.write(text)
            f.truncate()

    def _rewrite_resolv(self, cid: str) -> None:
        """After a connect or disconnect: the running container's resolv.conf names the embedded
        DNS of a network it is still on (or the host's resolvers), rewritten in place."""
        try:
            record = self.containers.get(cid, sync=False)
        except NotFound:
            return
        path = os.path.join(self.containers.root, cid, "resolv.conf")
        if record.state.value not in ACTIVE:
            return
        try:
            text = self.containers.resolv_conf_text(record)
            with open(path, "r+") as f:
                current = f.read()
                if current == text or not self.containers.etc_file_is_ours(cid, "resolv.conf", current):
                    return  # unchanged, or edited inside the container: left as it is (Docker's way)
                f.seek(0)
                f.write(text)
                f.truncate()
            self.containers.remember_etc_file(cid, "resolv.conf", text)
        except (OSError, EngineError):
            return  # removed meanwhile

    def _update_peers(self, ep: dict, exclude: str, gone: bool = False) -> None:
        names = {n for n in (ep.get("attachments") or {}) if n != DEFAULT_NETWORK}
        if not names:
            return
        for peer in self._endpoints():
            if peer["id"] != exclude and names & set(peer.get("attachments") or {}):
                self._rewrite_hosts(peer["id"])

    def settings(self, record) -> dict:
        return network_settings(self, record)

    def summary_ports(self, record) -> list[dict]:
        """``docker ps``'s Ports: each published port, then exposed ports that are not published."""
        return _summary_ports(record, self._load_endpoint(record.id) or {})

    def summary_networks(self, records) -> list[tuple[list[dict], dict]]:
        """For ``docker ps``: each record's (``summary_ports``, ``settings()["Networks"]``), with one
        listing of the endpoints dir (a created container has no endpoint: no open per container) and
        each network's id looked up once for all."""
        try:
            present = set(os.listdir(self.endpoints_dir))
        except FileNotFoundError:
            present = set()
        ids: dict[str, str | None] = {}

        def network_id(name: str) -> str | None:
            if name not in ids:
                try:
                    ids[name] = self.network_id(name)
                except (NotFound, InvalidArgument):
                    ids[name] = None
            return ids[name]

        # Each answer is kept for the next list while its record (the store's shared object), its
        # endpoint file and the networks dir stay the same; only files older than a second count
        # as the same (two writes within one tick of the file system's clock look alike).
        try:
            networks_stamp = os.stat(self.root).st_mtime_ns
        except FileNotFoundError:
            networks_stamp = 0
        now = time.time_ns()
        kept_stamp, kept = self._summary_cache
        if not networks_stamp or networks_stamp != kept_stamp:
            kept = {}
        cache, out = {}, []
        for record in records:
            ep_stamp = None
            if f"{record.id}.json" in present:
                try:
                    st = os.stat(self._ep_path(record.id))
                    ep_stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
                except FileNotFoundError:
                    pass
            hit = kept.get(record.id)
            if hit is not None and hit[0] is record and hit[1] == ep_stamp:
                value = hit[2]
            else:
                ep = (self._load_endpoint(record.id) if ep_stamp is not None else None) or {}
                value = (_summary_ports(record, ep), _networks(record, ep, network_id))
            if ep_stamp is None or now - ep_stamp[1] > 1_000_000_000:
                cache[record.id] = (record, ep_stamp, value)
            out.append(value)
        if networks_stamp and now - networks_stamp > 1_000_000_000:
            self._summary_cache = (networks_stamp, cache)
        return out

    #
    # The pool of pre-networked namespaces (notes §6)
    #

    def start_pool(self, size: int = 2) -> None:
        """Keep ``size`` namespaces ADDed to the default network ready (refilled in a thread), so
        that a container's start runs no CNI plugin but portmap (when it publishes ports); and run
        the releases that containers' exits queue (``release``), off their path. This process
        then holds the keeper lock, which tells every process on this root to queue its releases."""
        if size <= 0:  # no pool: no keeper either (a held keeper lock with no keeper would strand releases)
            self.stop_pool()
            return
        self.pool_size = size
        self._refill_pool_async()
        with self._pool_lock:
            if self._pool_keeper is None or not self._pool_keeper.is_alive():
                if self._keeper_fd < 0:
                    fd = os.open(os.path.join(self.release_dir, ".keeper"), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC,
                                 0o600)
                    fcntl.flock(fd, fcntl.LOCK_SH)
                    self._keeper_fd = fd
                wake_read, self._pool_wake = os.pipe()
                self._pool_keeper = threading.Thread(target=self._keep_pool, args=(wake_read,), daemon=True,
                                                     name="berth-netns-pool-keeper")
                self._pool_keeper.start()

    def _keep_pool(self, wake_fd: int) -> None:
        """While the pool is on: refill whenever an entry leaves the pool dir, and run each release
        queued in the releasing dir. The worker's main process keeps the pool, but containers start
        and stop in its pool processes, which claim entries from the same dir (a rename) and queue
        their releases (also a rename), and do neither of the keeper's jobs themselves. Each pass
        also retries queued releases that a process dying half-way left (their lock is free)."""
        from runtime.monitor import FileWatch

        try:
            with FileWatch([(self.pool_dir, _IN_MOVED_FROM | _IN_DELETE),
                            (self.release_dir, _IN_MOVED_TO)]) as watch:
                while self.pool_size > 0:
                    self._refill_pool_async()
                    for path in self._pending():
                        if self.pool_size <= 0:
                            break
                        self._run_release(path)
                        self._refill_pool_async()  # a start claimed an entry meanwhile
                    if watch.wait(5.0, extra_fds=(wake_fd,)):
                        self._settle(watch, wake_fd)
        except Exception:
            logger.exception("the namespace pool's keeper stopped")
        finally:
            os.close(wake_fd)
            self._drop_keeper_lock()
            try:
                self.finish_releases()  # queued before the lock went: nobody else would run them now
            except Exception:
                logger.exception("could not finish the queued network releases")

    def _settle(self, watch, wake_fd: int) -> None:
        """Wait until the pool and the releasing dir are quiet for POOL_QUIET (see there)."""
        deadline = time.monotonic() + POOL_SETTLE_MAX
        while self.pool_size > 0 and self._ready_pool():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not watch.wait(min(POOL_QUIET, remaining), extra_fds=(wake_fd,)):
                return

    def _drop_keeper_lock(self) -> None:
        fd, self._keeper_fd = self._keeper_fd, -1
        if fd >= 0:
            os.close(fd)

    def _forget_keeper_after_fork(self) -> None:
        """In a child forked from a keeping process: keep nothing (the parent still does)."""
        if self._keeper_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._keeper_fd)  # the parent's lock stays: it is on the shared file description
        self._keeper_fd = -1
        self.pool_size = 0
        self._pool_keeper, self._pool_thread, self._pool_wake = None, None, -1
        self._pool_lock = threading.Lock()
        if self._dns is not None:
            self._dns.close_after_fork()
        self._dns = None
        if self._dns_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._dns_fd)  # the parent's lock stays: it is on the shared file description
        self._dns_fd = -1

    def stop_pool(self) -> None:
        """Stop refilling, DEL the ready namespaces, and run the releases still queued (from now on
        releases run in the process that stops a container, unless another process keeps a pool)."""
        self.pool_size = 0
        keeper = self._pool_keeper
        if keeper is not None:
            with contextlib.suppress(OSError):
                os.write(self._pool_wake, b"x")
            keeper.join()
            with contextlib.suppress(OSError):
                os.close(self._pool_wake)
            self._pool_keeper, self._pool_wake = None, -1
        self._drop_keeper_lock()
        thread = self._pool_thread
        if thread is not None:
            thread.join()
        for entry in os.listdir(self.pool_dir):
            path = os.path.join(self.pool_dir, entry)
            doc = _read_json(path)
            if entry.endswith(".json") and doc:
                claimed = path + ".taken"
                with contextlib.suppress(FileNotFoundError):
                    os.rename(path, claimed)
                    self._discard_pool_entry(doc)
                    os.unlink(claimed)
        if not self._keeper_alive():
            self.finish_releases()

    def _refill_pool_async(self) -> None:
        if self.pool_size <= 0:
            return
        with self._pool_lock:
            if self._pool_thread is not None and self._pool_thread.is_alive():
                return
            self._pool_thread = threading.Thread(target=self._refill_pool, daemon=True, name="berth-netns-pool")
            self._pool_thread.start()

    def _ready_pool(self) -> list[str]:
        return [e for e in os.listdir(self.pool_dir) if e.endswith(".json")]

    def _refill_pool(self) -> None:
        try:
            while self.pool_size > 0 and len(self._ready_pool()) < self.pool_size:
                self._make_pool_entry()
        except Exception:
            logger.exception("could not refill the namespace pool")

    def _make_pool_entry(self) -> None:
        doc = self._find(DEFAULT_NETWORK)
        self._host_rules()
        pid = "pool" + secrets.token_hex(30)
        entry = {"id": pid, "netns": os.path.join(self.netns_dir, pid), "boot_id": self.boot_id,
                 "attachment": {"cni_id": pid, "ifname": "eth0", "conflist": self._conflist(doc, True),
                                "runtime_config": {}, "result": None, "network_id": doc["Id"],
                                "endpoint_id": secrets.token_hex(32)}}
        adding = os.path.join(self.pool_dir, f"{pid}.adding")
        _write_json(adding, entry)
        try:
            ns.create(entry["netns"])
            att = entry["attachment"]
            att["result"] = self.cni.add(att["conflist"], {}, pid, entry["netns"], "eth0", only=("bridge", "firewall"))
            _fill(att)
            _write_json(adding, entry)
        except BaseException:
            self._discard_pool_entry(entry)
            os.unlink(adding)
            raise
        os.rename(adding, os.path.join(self.pool_dir, f"{pid}.json"))

    def _claim_pool(self) -> dict | None:
        """A ready entry, whoever keeps the pool: this process or another one on the same root
        (the worker's main process, for its pool processes). None when there is none."""
        for entry in self._ready_pool():
            path = os.path.join(self.pool_dir, entry)
            try:
                os.rename(path, path + ".taken")
            except FileNotFoundError:
                continue
            doc = _read_json(path + ".taken")
            if doc and doc.get("boot_id") == self.boot_id and ns.is_live(doc["netns"]):
                doc["_path"] = path + ".taken"
                return doc
            if doc:
                self._discard_pool_entry(doc)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + ".taken")
        self._refill_pool_async()
        return None

    def _release_claim(self, claimed: dict) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(claimed["_path"])

    def _discard_pool_entry(self, entry: dict) -> None:
        att = entry["attachment"]
        self.cni.delete(att["conflist"], {}, att["cni_id"], entry["netns"], "eth0", result=att.get("result"))
        if att.get("result") is None:
            self._forget_lease(att)
        ns.remove(entry["netns"])

    #
    # Cleanup at worker start (notes §7)
    #

    def cleanup(self) -> dict:
        """Remove what containers that no longer run (or exist) left, as a worker does at start:

        0. the releases still queued (``release``): DEL, unmount;
        1. each endpoint whose container is gone or not running: CNI DEL with the stored conflist
           and result (leases, portmap and ipMasq chains, firewall rules, the veth), unmount;
           a running one gets its host ports held again;
        2. pool entries half made, claimed and never used, or of a previous boot: DEL, unmount;
        3. nat chains still commented with a dead id, and namespace files nothing refers to
           (a previous boot's are plain files).
        Returns what was done: ``{"endpoints": [...], "pool": n, "netns": [...], "releases": n}``.
        """
        done = {"endpoints": [], "pool": 0, "netns": [], "releases": 0}
        # 0. Releases queued and never run (the keeper or the releasing process died): run them.
        done["releases"] = self.finish_releases()
        dead = set()
        for ep in self._endpoints():
            cid = ep["id"]
            record = None
            if self.containers is not None:
                with contextlib.suppress(NotFound):
                    record = self.containers.get(cid)  # syncs: a container that died is released now
            if record is None:
                if ep.get("attachments") or ep.get("netns"):
                    dead |= {a["cni_id"] for a in ep["attachments"].values()}
                    self._detach_all(ep)
                    done["endpoints"].append(cid)
                self.forget(cid)
                continue
            ep = self._load_endpoint(cid) or ep
            alive = record.state.value in ACTIVE and ep.get("boot_id") == self.boot_id and ns.is_live(ep.get("netns", ""))
            if alive:
                self.ports.hold_again(cid, ep.get("ports") or [])
            elif ep.get("attachments") or ep.get("netns"):
                dead |= {a["cni_id"] for a in ep["attachments"].values()}
                self._detach_all(ep)
                ep["ports"] = []
                _write_json(self._ep_path(cid), ep)
                done["endpoints"].append(cid)
        for entry in os.listdir(self.pool_dir):
            path = os.path.join(self.pool_dir, entry)
            doc = _read_json(path)
            if doc is None:
                continue
            stale = entry.endswith((".adding", ".taken")) or doc.get("boot_id") != self.boot_id \
                or not ns.is_live(doc["netns"])
            if stale:
                dead.add(doc["id"])
                self._discard_pool_entry(doc)
                os.unlink(path)
                done["pool"] += 1
        if dead:
            self._sweep_nat(dead)
        referenced = {os.path.basename(ep.get("netns", "")) for ep in self._endpoints()}
        referenced |= {os.path.basename((_read_json(p) or {}).get("netns", "")) for p in self._pending()}
        referenced |= {e.split(".")[0] for e in os.listdir(self.pool_dir)}
        if os.path.isdir(self.netns_dir):
            for entry in os.listdir(self.netns_dir):
                if entry not in referenced:
                    ns.remove(os.path.join(self.netns_dir, entry))
                    done["netns"].append(entry)
        return done

    def _forget_lease(self, att: dict) -> None:
        """Unlink host-local leases holding ``cni_id`` (an ADD that died before its result)."""
        directory = os.path.join(self.ipam_dir, att["conflist"]["name"])
        with contextlib.suppress(FileNotFoundError):
            for entry in os.listdir(directory):
                path = os.path.join(directory, entry)
                with contextlib.suppress(OSError):
                    with open(path) as f:
                        if f.read(200).split("\r\n")[0].strip() == att["cni_id"]:
                            os.unlink(path)

    def _sweep_nat(self, cids: set[str]) -> None:
        """Delete nat rules (and their chains) commented with one of these CNI container ids: the
        bridge's ipMasq chain leaks when the netns went first (notes §7)."""
        if not cids:
            return
        with _iptables_lock:
            dump = iptables("-t", "nat", "-S", check=False).stdout
            for line in dump.splitlines():
                if not line.startswith("-A ") or not any(f'id: \\"{c}\\"' in line or f'id: "{c}"' in line
                                                         for c in cids):
                    continue
                words = _split_rule(line)
                chain, rule = words[1], words[2:]
                iptables("-t", "nat", "-D", chain, *rule, check=False)
                if "-j" in rule:
                    target = rule[rule.index("-j") + 1]
                    if target.startswith("CNI-") and target not in ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ",
                                                                   "CNI-HOSTPORT-SETMARK"):
                        iptables("-t", "nat", "-F", target, check=False)
                        iptables("-t", "nat", "-X", target, check=False)


def check_endpoint_options(network: str, aliases, ip: str) -> None:
    """Docker's refusals of --ip and --network-alias (at create and at connect) on a network that
    is not user-defined: the default bridge, host, none, another container's."""
    if network in PREDEFINED or network.startswith("container:"):
        if ip:
            raise InvalidArgument("user specified IP address is supported on user defined networks only")
        if aliases:
            raise InvalidArgument("network-scoped alias is supported only for containers in user defined networks")


def _split_rule(line: str) -> list[str]:
    import shlex

    return shlex.split(line)


def _fill(att: dict) -> None:
    """IP, prefix, gateway, MAC and host veth of an ADD result (1.0.0)."""
    result = att.get("result") or {}
    ips = result.get("ips") or []
    interfaces = result.get("interfaces") or []
    if ips:
        address, _, prefix = ips[0]["address"].partition("/")
        att.update(ip=address, prefix=int(prefix or 32), gateway=ips[0].get("gateway", ""))
    sandbox = next((i for i in interfaces if i.get("sandbox")), {})
    att["mac"] = sandbox.get("mac", "")
    att["veth"] = next((i.get("name") for i in interfaces if not i.get("sandbox") and i.get("name", "").startswith("veth")), "")


def _empty_endpoint() -> dict:
    return {"IPAMConfig": None, "Links": None, "Aliases": None, "NetworkID": "", "EndpointID": "", "Gateway": "",
            "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
            "MacAddress": "", "DriverOpts": None}


def _summary_ports(record, ep: dict) -> list[dict]:
    """NetworkManager.summary_ports with the container's endpoint document (``{}``: none)."""
    out, published = [], set()
    for m in ep.get("ports") or []:
        out.append({"IP": m.get("hostIP") or "0.0.0.0", "PrivatePort": m["containerPort"],
                    "PublicPort": m["hostPort"], "Type": m["protocol"]})
        published.add((m["containerPort"], m["protocol"]))
    for key in sorted(set(record.config.exposed_ports or {}) | set(record.config.port_bindings or {})):
        with contextlib.suppress(InvalidArgument):
            numbers, proto = parse_key(key)
            out += [{"PrivatePort": n, "Type": proto} for n in numbers if (n, proto) not in published]
    return out


def _network_names(record, ep: dict) -> list[str]:
    mode = record.config.network_mode or DEFAULT_NETWORK
    if mode.startswith("container:"):
        return []
    if mode in ("host", "none"):
        return [mode]
    return list(ep.get("networks") or {mode: {}}) if ep else [mode]


def _networks(record, ep: dict, network_id: Callable[[str], str | None]) -> dict:
    """NetworkSettings.Networks of a container with endpoint document ``ep``; ``network_id(name)``
    gives a network's id (None: no such network)."""
    atts = ep.get("attachments") or {}
    networks = {}
    for name in _network_names(record, ep):
        endpoint = _empty_endpoint()
        found = network_id(name)
        if found is not None:
            endpoint["NetworkID"] = found
        member = (ep.get("networks") or {}).get(name) or {}
        aliases = list(member.get("aliases") or [])
        if name not in PREDEFINED:
            endpoint["Aliases"] = [record.id[:12], *aliases]
        if member.get("ip"):
            endpoint["IPAMConfig"] = {"IPv4Address": member["ip"]}
        links = [f"/{parse_link(t)[0]}:/{record.name}/{parse_link(t)[1]}" for t in record.config.links or []]
        if links and name == DEFAULT_NETWORK:
            endpoint["Links"] = links
        att = atts.get(name)
        if att and att.get("ip"):
            endpoint.update(EndpointID=att["endpoint_id"], Gateway=att.get("gateway", ""), IPAddress=att["ip"],
                            IPPrefixLen=att.get("prefix", 0), MacAddress=att.get("mac", ""))
        networks[name] = endpoint
    return networks


def network_settings(manager: NetworkManager, record) -> dict:
    """Docker's ``NetworkSettings`` of a container: Ports, and Networks{name: endpoint} with the IP,
    gateway, MAC, aliases and ids while it runs (empty fields when it does not)."""
    mode = record.config.network_mode or DEFAULT_NETWORK
    ep = manager._load_endpoint(record.id) or {}
    atts = ep.get("attachments") or {}
    names = _network_names(record, ep)

    def network_id(name: str) -> str | None:
        try:
            return manager.network_id(name)
        except (NotFound, InvalidArgument):
            return None

    networks = _networks(record, ep, network_id)
    ports = {}
    for key in sorted(set(record.config.exposed_ports or {}) | set(record.config.port_bindings or {})):
        with contextlib.suppress(InvalidArgument):
            numbers, proto = parse_key(key)
            for number in numbers:
                ports[f"{number}/{proto}"] = None
    for m in ep.get("ports") or []:
        key = f"{m['containerPort']}/{m['protocol']}"
        ports[key] = (ports.get(key) or []) + [{"HostIp": m.get("hostIP") or "0.0.0.0", "HostPort": str(m["hostPort"])}]
    running = record.state.value in ACTIVE
    first = next((atts[n] for n in names if n in atts and atts[n].get("ip")), None)
    top = {"EndpointID": "", "Gateway": "", "IPAddress": "", "IPPrefixLen": 0, "MacAddress": ""}
    if first and mode == DEFAULT_NETWORK:  # Docker fills the top-level fields for the default bridge only
        top = {"EndpointID": first["endpoint_id"], "Gateway": first.get("gateway", ""), "IPAddress": first["ip"],
               "IPPrefixLen": first.get("prefix", 0), "MacAddress": first.get("mac", "")}
    return {
        "Bridge": "", "SandboxID": ep.get("netns", "") and os.path.basename(ep["netns"]) if running else "",
        "HairpinMode": False, "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0,
        "Ports": ports if running else {}, "SandboxKey": ep.get("netns", "") if running else "",
        "SecondaryIPAddresses": None, "SecondaryIPv6Addresses": None, "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0, "IPv6Gateway": "", **top, "Networks": networks,
    }

