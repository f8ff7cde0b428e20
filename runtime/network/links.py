"""Legacy links (``--link name:alias``) and the names of a network's members, for /etc/hosts.

Docker 20.10's shapes (notes/cni.md §4): a hosts line ``<ip>\\t<alias> <linked short id> <linked
name>``, and the env ``<ALIAS>_NAME=/<own name>/<alias>``, ``<ALIAS>_PORT=<proto>://<ip>:<lowest
port>``, per exposed port ``<ALIAS>_PORT_80_TCP=tcp://<ip>:80`` with ``_ADDR``, ``_PORT``, ``_PROTO``,
and ``<ALIAS>_ENV_<K>=<v>`` for the linked container's env (HOME, PATH and HOSTNAME left out).
"""

from __future__ import annotations

import re

from runtime.errors import InvalidArgument

from .ports import parse_key


def parse_link(text: str) -> tuple[str, str]:
    """``web``, ``web:alias``, or the API's stored ``/web:/client/alias`` -> (name, alias)."""
    name, sep, alias = str(text).partition(":")
    name = name.strip().lstrip("/")
    alias = alias.strip().rsplit("/", 1)[-1] if sep else name
    if not name or not alias:
        raise InvalidArgument(f"invalid link: {text!r} (expected name:alias)")
    return name, alias


def _env_prefix(alias: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", alias.upper())


def link_env(own_name: str, alias: str, ip: str, exposed_ports: dict, env: list[str]) -> list[str]:
    prefix = _env_prefix(alias)
    out = [f"{prefix}_NAME=/{own_name}/{alias}"]
    ports = []
    for key in exposed_ports or {}:
        try:
            numbers, proto = parse_key(key)
        except InvalidArgument:
            continue
        ports += [(n, proto) for n in numbers]
    ports.sort()
    if ports:
        number, proto = ports[0]
        out.append(f"{prefix}_PORT={proto}://{ip}:{number}")
    for number, proto in ports:
        base = f"{prefix}_PORT_{number}_{proto.upper()}"
        out += [f"{base}={proto}://{ip}:{number}", f"{base}_ADDR={ip}", f"{base}_PORT={number}",
                f"{base}_PROTO={proto}"]
    for line in env or []:
        key, sep, value = line.partition("=")
        if sep and key not in ("HOME", "PATH", "HOSTNAME"):
            out.append(f"{prefix}_ENV_{key}={value}")
    return out


def hosts_entry(ip: str, *names: str) -> str:
    """One /etc/hosts line in oci_spec.hosts_file's ``names:ip`` form (names deduplicated, in order)."""
    unique = list(dict.fromkeys(n for n in names if n))
    return f"{' '.join(unique)}:{ip}"
