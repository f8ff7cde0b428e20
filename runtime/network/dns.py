"""The embedded DNS of user-defined networks: containers find each other by name with DNS too.

Docker answers on 127.0.0.11 inside each container; Berth answers, as Podman's aardvark-dns does,
on each user-defined network's gateway address (on the host, one UDP socket per network, bound
with IP_FREEBIND so the bridge need not exist yet). A container on such a network gets that
address as its nameserver (``NetworkManager.nameserver``). For a query that arrives on a
network's socket:

- a name (or alias, or short id) of a running container attached to that network: its address
  on that network (A; other types get an empty answer, so resolvers do not wait);
- any other name: relayed to the upstream resolvers (the host's, or RuntimeConfig.dns_upstreams)
  and their answer relayed back; an internal network answers REFUSED instead, as it has no way out.

/etc/hosts keeps the same names (getaddrinfo reads it first); the DNS is for what asks a DNS
server directly (nslookup, dig, resolvers of their own). It runs in the worker's main process
next to the namespace pool (``NetworkManager.start_dns``), which holds ``<root>/.dns`` locked so
that the processes writing containers' resolv.conf know it answers.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
from typing import Callable, Iterable

logger = logging.getLogger(__name__)

IP_FREEBIND = 15
_IN_DELETE = 0x00000200
_IN_MOVED_FROM = 0x00000040
TTL = 600
UPSTREAM_TIMEOUT = 3.0
MAX_QUERY = 4096

QTYPE_A = 1
QTYPE_ANY = 255
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_REFUSED = 5


class Query:
    """The parts of a DNS query that an answer needs."""

    def __init__(self, data: bytes):
        if len(data) < 12:
            raise ValueError("short DNS message")
        self.id, self.flags, qdcount = struct.unpack("!HHH", data[:6])
        if self.flags & 0x8000 or qdcount != 1:
            raise ValueError("not a query with one question")
        labels, pos = [], 12
        while True:
            if pos >= len(data):
                raise ValueError("truncated name")
            length = data[pos]
            if length & 0xC0:
                raise ValueError("compressed name in a question")
            pos += 1
            if length == 0:
                break
            labels.append(data[pos:pos + length])
            pos += length
        if pos + 4 > len(data):
            raise ValueError("truncated question")
        self.qtype, self.qclass = struct.unpack("!HH", data[pos:pos + 4])
        self.question = data[12:pos + 4]
        self.name = b".".join(labels).decode("ascii", "replace").lower()

    def answer(self, addresses: Iterable[str] = (), rcode: int = 0) -> bytes:
        addresses = list(addresses) if self.qtype in (QTYPE_A, QTYPE_ANY) and self.qclass == 1 else []
        # QR, the query's opcode and RD, AA (this server owns the name), RA.
        flags = 0x8000 | (self.flags & 0x7900) | 0x0400 | 0x0080 | rcode
        out = [struct.pack("!HHHHHH", self.id, flags, 1, len(addresses), 0, 0), self.question]
        for address in addresses:
            out.append(struct.pack("!HHHIH", 0xC00C, QTYPE_A, 1, TTL, 4) + socket.inet_aton(address))
        return b"".join(out)


def host_upstreams(resolv_conf: str = "/etc/resolv.conf") -> list[str]:
    """The IPv4 nameservers of the host's resolv.conf."""
    out = []
    try:
        with open(resolv_conf) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    try:
                        socket.inet_aton(parts[1])
                    except OSError:
                        continue
                    out.append(parts[1])
    except OSError:
        pass
    return out


def parse_upstream(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    return (host, int(port)) if sep and port.isdigit() else (text, 53)


class DnsServer(threading.Thread):
    """Answers on the gateways ``networks()`` gives: {gateway: (network name, internal)}; the
    addresses of a name come from ``lookup(network name, name)``. Looks for new and removed
    networks every ``refresh`` seconds."""

    def __init__(self, networks: Callable[[], dict[str, tuple[str, bool]]],
                 lookup: Callable[[str, str], list[str]], upstreams: Callable[[], list[str]],
                 port: int = 53, refresh: float = 1.0, on_bound: Callable[[list[str]], None] | None = None,
                 watch_dir: str | None = None):
        super().__init__(name="berth-dns", daemon=True)
        self.networks, self.lookup, self.upstreams = networks, lookup, upstreams
        self.on_bound = on_bound
        # Where networks are created and removed: a change there rebinds at once, not at the next refresh.
        self.watch_dir = watch_dir
        self.port, self.refresh = port, refresh
        self.sockets: dict[str, tuple[socket.socket, str, bool]] = {}
        self.stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()

    def stop(self) -> None:
        self.stopping.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self.join(5)

    def run(self) -> None:
        from runtime.monitor import IN_CLOSE_WRITE, IN_MOVED_TO, FileWatch

        watch = None
        if self.watch_dir:
            watch = FileWatch([(self.watch_dir, IN_MOVED_TO | IN_CLOSE_WRITE | _IN_DELETE | _IN_MOVED_FROM)])
        try:
            while not self.stopping.is_set():
                try:
                    self._bind_all()
                except Exception:
                    logger.exception("dns: could not look at the networks")
                by_fd = {s.fileno(): (s, name, internal) for s, name, internal in self.sockets.values()}
                extra = [watch.fd] if watch is not None else []
                ready, _, _ = select.select([*by_fd, self._wake_r.fileno(), *extra], [], [], self.refresh)
                for fd in ready:
                    if fd in by_fd:
                        self._serve(*by_fd[fd])
                    elif watch is not None and fd == watch.fd:
                        watch.wait(0)  # drains it; the loop rebinds
        finally:
            if watch is not None:
                watch.close()
            for sock, _, _ in self.sockets.values():
                sock.close()
            self.sockets.clear()
            self._wake_r.close()
            self._wake_w.close()

    def _bind_all(self) -> None:
        before = set(self.sockets)
        self._rebind(self.networks())
        if self.on_bound is not None and (set(self.sockets) != before or not self._told):
            self.on_bound(list(self.sockets))
            self._told = True

    _told = False

    def _rebind(self, wanted: dict[str, tuple[str, bool]]) -> None:
        for gateway in [g for g in self.sockets if g not in wanted or self.sockets[g][1:] != wanted[g]]:
            self.sockets.pop(gateway)[0].close()
        for gateway, (name, internal) in wanted.items():
            if gateway in self.sockets:
                continue
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
                sock.bind((gateway, self.port))
            except OSError as e:
                sock.close()
                logger.warning("dns: cannot answer on %s:%d for network %s: %s", gateway, self.port, name, e)
                continue
            sock.setblocking(False)
            self.sockets[gateway] = (sock, name, internal)

    def _serve(self, sock: socket.socket, network: str, internal: bool) -> None:
        try:
            data, peer = sock.recvfrom(MAX_QUERY)
        except OSError:
            return
        try:
            query = Query(data)
        except ValueError:
            return  # not a question we can answer: no answer, as for garbage
        try:
            addresses = self.lookup(network, query.name)
        except Exception:
            logger.exception("dns: lookup of %r on %s failed", query.name, network)
            self._send(sock, query.answer(rcode=RCODE_SERVFAIL), peer)
            return
        if addresses:
            self._send(sock, query.answer(addresses), peer)
        elif internal:
            self._send(sock, query.answer(rcode=RCODE_REFUSED), peer)
        else:
            threading.Thread(target=self._relay, args=(sock, data, query, peer), daemon=True,
                             name="berth-dns-relay").start()

    def _relay(self, sock: socket.socket, data: bytes, query: Query, peer) -> None:
        """Ask each upstream in turn; relay the first answer (whatever its code)."""
        for upstream in self.upstreams():
            host, port = parse_upstream(upstream)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
                out.settimeout(UPSTREAM_TIMEOUT)
                try:
                    out.connect((host, port))
                    out.send(data)
                    while True:
                        answer = out.recv(65535)
                        if answer[:2] == data[:2]:
                            self._send(sock, answer, peer)
                            return
                except OSError:
                    continue
        self._send(sock, query.answer(rcode=RCODE_SERVFAIL), peer)

    @staticmethod
    def _send(sock: socket.socket, answer: bytes, peer) -> None:
        try:
            sock.sendto(answer, peer)
        except OSError as e:
            logger.debug("dns: answer to %s lost: %s", peer, e)
