"""Run options: from the Docker API's create body, or from the run form's text, to one ContainerConfig dict.

Both paths end in the same dict (the fields of runtime.containers.ContainerConfig, JSON-able so it
travels through Celery), so the browser and the docker CLI get the same validation and errors.
"""

from __future__ import annotations

import re
import shlex

from runtime.errors import InvalidArgument

NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([bkmgt]?)b?$", re.IGNORECASE)
SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
RESTART_NAMES = ("no", "on-failure", "always", "unless-stopped")


def check_name(name: str) -> str:
    """A container name as Docker allows it ([a-zA-Z0-9][a-zA-Z0-9_.-]+); returns it without "/"."""
    if name and not NAME_RE.match(name):
        raise InvalidArgument(f'Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed')
    return name.lstrip("/")


def parse_size(text: str | int, what: str = "memory") -> int:
    """"256m" -> 268435456 (docker run --memory)."""
    if isinstance(text, int):
        return text
    text = str(text).strip()
    if not text:
        return 0
    match = SIZE_RE.match(text)
    if not match:
        raise InvalidArgument(f"invalid {what} size {text!r}: use a number with an optional unit b, k, m or g")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2).lower()])


def parse_bind(spec: str) -> dict:
    """"-v /host:/ctr[:ro]" or "-v name:/ctr" -> a Mount dict; a bare "/ctr" is an anonymous volume."""
    parts = spec.split(":")
    if len(parts) == 1:
        source, target, mode = "", parts[0], ""
    elif len(parts) == 2:
        source, target, mode = parts[0], parts[1], ""
    elif len(parts) == 3:
        source, target, mode = parts
    else:
        raise InvalidArgument(f"invalid volume specification: '{spec}'")
    if not target.startswith("/"):
        raise InvalidArgument(f"invalid volume specification: '{spec}': the container path must be absolute")
    modes = set(filter(None, mode.split(",")))
    if modes - {"ro", "rw", "z", "Z"}:
        raise InvalidArgument(f"invalid mode: {mode}")
    kind = "bind" if source.startswith("/") else "volume"
    return {"source": source, "target": target, "read_only": "ro" in modes, "kind": kind}


def parse_restart(text: str) -> dict:
    """"on-failure:3" -> {"Name": "on-failure", "MaximumRetryCount": 3}."""
    name, _, count = (text or "no").partition(":")
    if name not in RESTART_NAMES:
        raise InvalidArgument(f"invalid restart policy {text!r}: use no, on-failure[:N], always or unless-stopped")
    if count and name != "on-failure":
        raise InvalidArgument(f"invalid restart policy {text!r}: only on-failure takes a count")
    try:
        retries = int(count or 0)
    except ValueError:
        raise InvalidArgument(f"invalid restart policy {text!r}: the count must be a number") from None
    return {"Name": name, "MaximumRetryCount": retries}


def parse_env(lines) -> list[str]:
    """KEY=VALUE lines; a line without "=" is refused (the browser has no environment to take it from)."""
    env = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, _ = line.partition("=")
        if not sep or not key or " " in key:
            raise InvalidArgument(f"invalid environment variable {line!r}: use KEY=value")
        env.append(line)
    return env


def parse_ports(specs) -> tuple[dict, dict]:
    """"-p [ip:]host:ctr[/proto]" -> (ExposedPorts, PortBindings) in Docker's shapes."""
    exposed, bindings = {}, {}
    for spec in specs:
        spec = spec.strip()
        if not spec:
            continue
        port, _, proto = spec.partition("/")
        proto = proto or "tcp"
        if proto not in ("tcp", "udp", "sctp"):
            raise InvalidArgument(f"invalid port protocol in {spec!r}")
        parts = port.rsplit(":", 2)
        host_ip, host_port, ctr = ("", "", parts[0]) if len(parts) == 1 else (
            ("", parts[0], parts[1]) if len(parts) == 2 else (parts[0], parts[1], parts[2]))
        if not ctr.isdigit() or (host_port and not host_port.replace("-", "").isdigit()):
            raise InvalidArgument(f"invalid port specification: {spec!r}")
        key = f"{ctr}/{proto}"
        exposed[key] = {}
        bindings.setdefault(key, []).append({"HostIp": host_ip, "HostPort": host_port})
    return exposed, bindings


def from_docker(body: dict, name: str = "") -> dict:
    """The ContainerConfig dict of a ``POST /containers/create`` body (Config + HostConfig)."""
    if not isinstance(body, dict):
        raise InvalidArgument("invalid JSON body: expected an object")
    host = body.get("HostConfig") or {}
    image = body.get("Image") or ""
    if not image:
        raise InvalidArgument("No image specified: Config.Image is required")
    mounts = [parse_bind(b) for b in host.get("Binds") or []]
    for m in host.get("Mounts") or []:
        kind = (m.get("Type") or "volume").lower()
        if kind not in ("bind", "volume"):
            raise InvalidArgument(f"mount type {kind!r} is not supported")
        mounts.append({"source": m.get("Source") or "", "target": m.get("Target") or "",
                       "read_only": bool(m.get("ReadOnly")), "kind": kind})
    for target in (body.get("Volumes") or {}):
        if not any(m["target"] == target for m in mounts):
            mounts.append({"source": "", "target": target, "read_only": False, "kind": "volume"})
    nano_cpus = int(host.get("NanoCpus") or 0)
    if not nano_cpus and host.get("CpuQuota") and host.get("CpuPeriod"):
        nano_cpus = int(host["CpuQuota"] * 1_000_000_000 / host["CpuPeriod"])
    restart = host.get("RestartPolicy") or {}
    restart_name = restart.get("Name") or "no"
    if restart_name not in RESTART_NAMES:
        raise InvalidArgument(f"invalid restart policy {restart_name!r}")
    if host.get("AutoRemove") and restart_name != "no":
        raise InvalidArgument("conflicting options: --restart and --rm")
    aliases, ipv4 = _endpoint_options(body.get("NetworkingConfig") or {}, host.get("NetworkMode") or "bridge")
    return {
        "image": image,
        "name": check_name(name),
        "cmd": body.get("Cmd") if body.get("Cmd") else None,
        "entrypoint": body.get("Entrypoint") if body.get("Entrypoint") is not None else None,
        "env": list(body.get("Env") or []),
        "working_dir": body.get("WorkingDir") or "",
        "user": body.get("User") or "",
        "hostname": body.get("Hostname") or "",
        "tty": bool(body.get("Tty")),
        "open_stdin": bool(body.get("OpenStdin")),
        "stdin_once": bool(body.get("StdinOnce")),
        "labels": dict(body.get("Labels") or {}),
        "mounts": mounts,
        "read_only": bool(host.get("ReadonlyRootfs")),
        "cap_add": list(host.get("CapAdd") or []),
        "cap_drop": list(host.get("CapDrop") or []),
        "memory": int(host.get("Memory") or 0),
        "nano_cpus": nano_cpus,
        "pids_limit": int(host.get("PidsLimit") or 0),
        "network_mode": host.get("NetworkMode") or "bridge",
        "restart_policy": {"Name": restart_name, "MaximumRetryCount": int(restart.get("MaximumRetryCount") or 0)},
        "auto_remove": bool(host.get("AutoRemove")),
        "exposed_ports": dict(body.get("ExposedPorts") or {}),
        "port_bindings": dict(host.get("PortBindings") or {}),
        "publish_all_ports": bool(host.get("PublishAllPorts")),
        "stop_signal": body.get("StopSignal") or "",
        "stop_timeout": body.get("StopTimeout"),
        "privileged": bool(host.get("Privileged")),
        "extra_hosts": list(host.get("ExtraHosts") or []),
        "dns": list(host.get("Dns") or []),
        "dns_search": list(host.get("DnsSearch") or []),
        "dns_options": list(host.get("DnsOptions") or []),
        "links": list(host.get("Links") or []),
        "network_aliases": aliases,
        "ipv4_address": ipv4,
        "runtime": host.get("Runtime") or "",
    }


def _endpoint_options(networking: dict, mode: str) -> tuple[list[str], str]:
    """``NetworkingConfig.EndpointsConfig`` of a create: the aliases and fixed IPv4 address asked
    for on the container's network (``--network-alias``, ``--ip``). Docker takes one network here
    (the others are for ``network connect``)."""
    endpoints = networking.get("EndpointsConfig") or {}
    if len(endpoints) > 1:
        raise InvalidArgument("Container cannot be connected to network endpoints: " + ", ".join(endpoints))
    if not endpoints:
        return [], ""
    name, endpoint = next(iter(endpoints.items()))
    endpoint = endpoint or {}
    if name not in (mode, "default" if mode == "bridge" else mode):
        raise InvalidArgument(f"the endpoint settings are for network {name}, the container joins {mode}")
    ipam = endpoint.get("IPAMConfig") or {}
    if ipam.get("IPv6Address"):
        raise InvalidArgument("IPv6 addresses are not supported")
    return [a for a in (endpoint.get("Aliases") or []) if a], ipam.get("IPv4Address") or ""


def from_form(data: dict) -> dict:
    """The ContainerConfig dict of the run form's cleaned data (text fields as a user types them)."""
    exposed, bindings = parse_ports(data.get("ports", "").splitlines())
    body = {
        "Image": data["image"],
        "Cmd": shlex.split(data["command"]) if data.get("command") else None,
        "Entrypoint": shlex.split(data["entrypoint"]) if data.get("entrypoint") else None,
        "Env": parse_env(data.get("env", "").splitlines()),
        "WorkingDir": data.get("workdir", ""),
        "User": data.get("user", ""),
        "Hostname": data.get("hostname", ""),
        "Tty": data.get("tty", False),
        "OpenStdin": data.get("interactive", False),
        "ExposedPorts": exposed,
        "HostConfig": {
            "Binds": [v.strip() for v in data.get("volumes", "").splitlines() if v.strip()],
            "ReadonlyRootfs": data.get("read_only", False),
            "CapAdd": data.get("cap_add", "").split(),
            "CapDrop": data.get("cap_drop", "").split(),
            "Memory": parse_size(data.get("memory", "")),
            "NanoCpus": int(float(data.get("cpus") or 0) * 1_000_000_000),
            "PidsLimit": int(data.get("pids_limit") or 0),
            "NetworkMode": data.get("network", "bridge") or "bridge",
            "RestartPolicy": parse_restart(data.get("restart", "no")),
            "AutoRemove": data.get("auto_remove", False),
            "PortBindings": bindings,
            "ExtraHosts": [h.strip() for h in data.get("extra_hosts", "").splitlines() if h.strip()],
            "Dns": data.get("dns", "").split(),
            "DnsSearch": data.get("dns_search", "").split(),
            "Links": data.get("links", "").split(),
            "PublishAllPorts": data.get("publish_all", False),
        },
    }
    aliases, ip = data.get("network_aliases", "").split(), data.get("ip") or ""
    if aliases or ip:
        network = body["HostConfig"]["NetworkMode"]
        body["NetworkingConfig"] = {"EndpointsConfig": {network: {"Aliases": aliases,
                                                                  "IPAMConfig": {"IPv4Address": ip} if ip else None}}}
    return from_docker(body, data.get("name", ""))
