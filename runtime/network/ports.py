"""Published ports: Docker's PortBindings to portmap's ``portMappings``, and the host ports held.

A host port is *reserved* by binding a socket on it (``[hostIP]:port``, not listening) and holding
it while the container runs (notes/cni.md §3.4): a failed bind is the conflict check, made before
the container starts, and nothing else (docker-proxy, another service) can take the port while
portmap's DNAT forwards it. ``-P`` binds port 0 and keeps the port the kernel chose.
"""

from __future__ import annotations

import contextlib
import errno
import socket

from runtime.errors import InvalidArgument, InvalidState


class PortInUse(InvalidState):
    """A host port asked for is taken (by another container or any other program)."""


def _port_range(text: str, what: str) -> list[int]:
    text = (text or "").strip()
    low, sep, high = text.partition("-")
    try:
        first = int(low)
        last = int(high) if sep else first
    except ValueError:
        raise InvalidArgument(f"invalid {what} port: {text!r}") from None
    if not (0 < first <= last <= 65535):
        raise InvalidArgument(f"invalid {what} port range: {text!r}")
    return list(range(first, last + 1))


def parse_key(key: str) -> tuple[list[int], str]:
    """``"80/tcp"``, ``"53/udp"``, ``"8000-8002"`` -> ([ports], proto)."""
    port, _, proto = str(key).partition("/")
    proto = (proto or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise InvalidArgument(f"invalid port protocol: {key!r}")
    return _port_range(port, "container"), proto


def wanted_mappings(port_bindings: dict, exposed_ports: dict, publish_all: bool) -> list[dict]:
    """The mappings asked for: ``{"containerPort", "protocol", "hostIP", "hostPort"}`` with hostPort 0
    for "any free port" (``-p 80``, ``-P``). A host range pairs with a container range of the same
    length; with a single container port it means "the first free port of the range" (Docker)."""
    mappings = []
    seen = set()
    for key in sorted(port_bindings or {}, key=str):
        ports, proto = parse_key(key)
        for binding in port_bindings[key] or [{}]:
            host_ip = (binding or {}).get("HostIp") or ""
            host_text = str((binding or {}).get("HostPort") or "")
            if host_ip:
                try:
                    socket.inet_pton(socket.AF_INET6 if ":" in host_ip else socket.AF_INET, host_ip)
                except OSError:
                    raise InvalidArgument(f"invalid IP address in port binding: {host_ip!r}") from None
            host_ports = _port_range(host_text, "host") if host_text else [0] * len(ports)
            if len(ports) > 1 and len(host_ports) != len(ports):
                raise InvalidArgument(f"invalid ranges specified for container and host ports: {key} {host_text}")
            for i, ctr in enumerate(ports):
                choices = host_ports if len(ports) == 1 else [host_ports[i]]
                mapping = {"containerPort": ctr, "protocol": proto, "hostIP": host_ip, "choices": choices}
                mappings.append(mapping)
                seen.add((ctr, proto))
    if publish_all:
        for key in sorted(exposed_ports or {}, key=str):
            ports, proto = parse_key(key)
            for ctr in ports:
                if (ctr, proto) not in seen:
                    mappings.append({"containerPort": ctr, "protocol": proto, "hostIP": "", "choices": [0]})
    return mappings


def _bind(host_ip: str, port: int, proto: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host_ip else socket.AF_INET
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    if proto == "sctp":
        raise InvalidArgument("sctp port publishing is not supported")
    sock = socket.socket(family, kind)
    try:
        sock.bind((host_ip or "0.0.0.0", port))
    except BaseException:
        sock.close()
        raise
    return sock


class PortReservations:
    """The sockets held for published ports, per container id (in this process)."""

    def __init__(self):
        self._held: dict[str, list[socket.socket]] = {}

    def reserve(self, owner: str, wanted: list[dict], taken_by_others: set[tuple[str, int, str]]) -> list[dict]:
        """Bind every mapping's host port (the first free of its choices; 0: the kernel's pick) and
        hold the sockets under ``owner``. Returns portmap's mappings. Raises PortInUse, in Docker's
        words, releasing what it bound, when a port is taken (by anyone, or by another container of
        this engine: ``taken_by_others``)."""
        sockets, result = [], []
        try:
            for m in wanted:
                proto, host_ip = m["protocol"], m["hostIP"]
                last_error = None
                for port in m["choices"]:
                    if port and _conflicts(taken_by_others, host_ip, port, proto):
                        last_error = OSError(errno.EADDRINUSE, "address already in use")
                        continue
                    try:
                        sock = _bind(host_ip, port, proto)
                    except OSError as exc:
                        last_error = exc
                        continue
                    sockets.append(sock)
                    chosen = sock.getsockname()[1]
                    entry = {"hostPort": chosen, "containerPort": m["containerPort"], "protocol": proto}
                    if host_ip:
                        entry["hostIP"] = host_ip
                    result.append(entry)
                    break
                else:
                    first = m["choices"][0]
                    address = f"{host_ip or '0.0.0.0'}:{first}" if len(m["choices"]) == 1 else \
                        f"{host_ip or '0.0.0.0'}:{m['choices'][0]}-{m['choices'][-1]}"
                    reason = last_error.strerror if isinstance(last_error, OSError) and last_error.strerror else \
                        "address already in use"
                    raise PortInUse(
                        f"driver failed programming external connectivity on endpoint: Bind for {address} "
                        f"failed: port is already allocated ({reason})")
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        self._held.setdefault(owner, []).extend(sockets)
        return result

    def hold_again(self, owner: str, mappings: list[dict]) -> None:
        """Best effort after a worker restart: bind the ports of a running container again."""
        if owner in self._held:
            return
        for m in mappings:
            with contextlib.suppress(OSError, InvalidArgument):
                self._held.setdefault(owner, []).append(_bind(m.get("hostIP", ""), m["hostPort"], m["protocol"]))

    def release(self, owner: str) -> None:
        for sock in self._held.pop(owner, []):
            sock.close()


def _conflicts(taken: set[tuple[str, int, str]], host_ip: str, port: int, proto: str) -> bool:
    for other_ip, other_port, other_proto in taken:
        if other_port == port and other_proto == proto and (not other_ip or not host_ip or other_ip == host_ip):
            return True
    return False
