"""The embedded DNS of user-defined networks: containers find each other by name with DNS too.

Docker answers on 127.0.0.11 inside each container; Berth answers, as Podman's aardvark-dns does,
on each user-defined network's gateway address. For each such network the worker's main process
holds a UDP socket on ``<gateway>:<a free port>`` (IP_FREEBIND: the bridge need not exist yet),
and a nat rule sends what arrives from the network's bridge for ``<gateway>:53`` there
(``NetworkManager.start_dns``): nothing is bound on port 53 itself, so a container may publish
53 and a host DNS server may own it. A container on such a network gets that gateway as its
nameserver (``NetworkManager.nameserver``).

A query is answered only when it came in on that network's bridge (IP_PKTINFO) from an address of
the network that is a container's there (``NetworkManager.dns_answer``); anything else gets no
answer. Then:

- a name (or alias, or short id) of a running container on one of the asking container's user
  networks: its address there (the network the query came on first); A only, other types get an
  empty answer so resolvers do not wait;
- any other name: relayed to the upstream resolvers (the host's, or RuntimeConfig.dns_upstreams)
  and their answer relayed back, at most MAX_RELAYS at once (SERVFAIL beyond); a container whose
  networks are all internal gets REFUSED instead, as it has no way out.

/etc/hosts keeps the same names (getaddrinfo reads it first); the DNS is for what asks a DNS
server directly (nslookup, dig, resolvers of their own). UDP, and TCP for long answers.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import ipaddress
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable

logger = logging.getLogger(__name__)

IP_FREEBIND = 15
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
IP_PKTINFO = 8
MAX_RELAYS = 32
TCP_SESSION = 10.0  # seconds a TCP connection may last, whatever it sends
TCP_QUERIES = 16
MAX_TCP_SESSIONS = 16
_IN_DELETE = 0x00000200
_IN_MOVED_FROM = 0x00000040
TTL = 600
UPSTREAM_TIMEOUT = 3.0
MAX_QUERY = 4096

QTYPE_A = 1
QTYPE_PTR = 12
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

    @property
    def reverse(self) -> bool:
        """A question about an IPv4 address (``d.c.b.a.in-addr.arpa``)."""
        return self.name.endswith(".in-addr.arpa")

    def answer_names(self, names: Iterable[str]) -> bytes:
        """PTR records: the names of the address asked about (an empty answer for other types)."""
        names = list(names) if self.qtype in (QTYPE_PTR, QTYPE_ANY) and self.qclass == 1 else []
        flags = 0x8000 | (self.flags & 0x7900) | 0x0400 | 0x0080
        out = [struct.pack("!HHHHHH", self.id, flags, 1, len(names), 0, 0), self.question]
        for name in names:
            rdata = encode_name(name)
            out.append(struct.pack("!HHHIH", 0xC00C, QTYPE_PTR, 1, TTL, len(rdata)) + rdata)
        return b"".join(out)


def encode_name(name: str) -> bytes:
    """A domain name in DNS wire format (labels of at most 63 bytes; longer ones are cut)."""
    labels = [label.encode("ascii", "replace")[:63] for label in name.rstrip(".").split(".") if label]
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\0"


def reverse_address(name: str) -> str | None:
    """The IPv4 address of ``d.c.b.a.in-addr.arpa``, or None."""
    parts = name.lower().rstrip(".").split(".")
    if len(parts) != 6 or parts[4:] != ["in-addr", "arpa"]:
        return None
    octets = parts[:4]
    if not all(o.isdigit() and o.isascii() and int(o) <= 255 and (o == "0" or not o.startswith("0")) for o in octets):
        return None  # plain decimal octets only (inet_aton would read 010 as octal)
    return ".".join(reversed(octets))


def _read_message(conn: socket.socket, deadline: float | None = None) -> bytes | None:
    """One length-prefixed DNS message from a TCP connection, or None at its end; OSError
    (a timeout) past ``deadline`` (time.monotonic())."""
    head = _read_exact(conn, 2, deadline)
    if head is None:
        return None
    return _read_exact(conn, struct.unpack("!H", head)[0], deadline)


def _read_exact(conn: socket.socket, size: int, deadline: float | None = None) -> bytes | None:
    chunks, left = [], size
    while left:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("DNS over TCP: the session is over")
            conn.settimeout(remaining)
        chunk = conn.recv(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


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


def parse_upstream(text: str) -> tuple[int, tuple]:
    """``ip``, ``ipv4:port`` or ``[ipv6]:port`` as (address family, socket address)."""
    text = text.strip()
    host, port = text, 53
    if text.startswith("[") and "]:" in text:
        host, _, rest = text[1:].partition("]:")
        port = int(rest)
    elif text.count(":") == 1:
        host, _, rest = text.partition(":")
        port = int(rest)
    address = ipaddress.ip_address(host)  # ValueError: not an address
    if address.version == 6:
        return socket.AF_INET6, (str(address), port, 0, 0)
    return socket.AF_INET, (str(address), port)


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), what)


def socket_in(netns: str | None, family: int, kind: int) -> socket.socket:
    """A socket of the network namespace at ``netns`` (None: this thread's own). The calling thread
    enters it just long enough to make the socket (setns affects only that thread), then returns."""
    if netns is None:
        return socket.socket(family, kind)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target, netns)
        finally:
            os.close(target)
        try:
            return socket.socket(family, kind)
        finally:
            _setns(own, "back to the thread's own network namespace")
    finally:
        os.close(own)


@dataclasses.dataclass
class Relay:
    """Where a name goes that the networks do not know: servers, each asked from the host (netns
    None) or from a container's network namespace, in turn."""
    servers: list[tuple[str, str | None]]


class DnsServer(threading.Thread):
    """Answers for the networks ``networks()`` gives: {name: (gateway, bridge)}; ``answer(network,
    name, source, fallback=False)`` says what: (records, relay), or None for no answer at all (with
    ``fallback``, the names it would answer only when the upstreams do not know them); ``relay`` is False
    (REFUSED), True (relay to ``upstreams()``) or the asker's own ``--dns`` servers, each with the
    network namespace to ask it from ([(server, netns or None)]).
    ``on_bound``
    gets {network: (gateway, udp port, bridge, tcp port)} whenever the sockets change. Looks at the networks
    every ``refresh`` seconds, and at once when ``watch_dir`` changes."""

    def __init__(self, networks: Callable[[], dict[str, tuple[str, str]]],
                 answer: Callable[..., tuple[list[str], bool | list[tuple[str, str | None]]] | None],
                 upstreams: Callable[[], list[str]], *, refresh: float = 10.0,
                 on_bound: Callable[[dict[str, tuple[str, int, str, int]]], None] | None = None,
                 watch_dir: str | None = None):
        super().__init__(name="berth-dns", daemon=True)
        self.networks, self.answer, self.upstreams = networks, answer, upstreams
        self.on_bound, self.refresh, self.watch_dir = on_bound, refresh, watch_dir
        self.sockets: dict[str, tuple[socket.socket, str, str]] = {}  # network -> (socket, gateway, bridge)
        self.listeners: dict[str, socket.socket] = {}  # network -> its TCP socket (same address)
        self.stopping = threading.Event()
        self.relays = threading.BoundedSemaphore(MAX_RELAYS)
        self.tcp_sessions = threading.BoundedSemaphore(MAX_TCP_SESSIONS)
        self._wake_r, self._wake_w = socket.socketpair()
        self._ifindex: dict[str, int] = {}

    def stop(self) -> None:
        self.stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self.join(5)

    def close_after_fork(self) -> None:
        """In a forked child: drop the copies of the sockets (the parent keeps serving)."""
        for sock, _, _ in self.sockets.values():
            sock.close()
        for sock in self.listeners.values():
            sock.close()
        self.sockets, self.listeners = {}, {}
        self._wake_r.close()
        self._wake_w.close()

    def run(self) -> None:
        from runtime.monitor import IN_CLOSE_WRITE, IN_MOVED_TO, FileWatch

        watch = None
        try:
            if self.watch_dir:
                watch = FileWatch([(self.watch_dir, IN_MOVED_TO | IN_CLOSE_WRITE | _IN_DELETE | _IN_MOVED_FROM)])
            while not self.stopping.is_set():
                try:
                    self._pass(watch)
                except Exception:  # one bad pass must not end the DNS: every container would lose it
                    logger.exception("dns: pass failed")
                    self.stopping.wait(0.1)
        finally:
            if watch is not None:
                watch.close()
            for sock, _, _ in self.sockets.values():
                sock.close()
            for sock in self.listeners.values():
                sock.close()
            self.sockets.clear()
            self.listeners.clear()
            if self.on_bound is not None:
                with contextlib.suppress(Exception):
                    self.on_bound({})
            self._wake_r.close()
            self._wake_w.close()

    def _pass(self, watch) -> None:
        self._bind_all()
        poller = select.poll()
        by_fd, tcp_fd = {}, {}
        for network, (sock, _, bridge) in self.sockets.items():
            by_fd[sock.fileno()] = (sock, network, bridge)
            poller.register(sock, select.POLLIN)
        for network, listener in self.listeners.items():
            tcp_fd[listener.fileno()] = (listener, network)
            poller.register(listener, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        if watch is not None:
            poller.register(watch.fd, select.POLLIN)
        for fd, _ in poller.poll(self.refresh * 1000):
            if fd in by_fd:
                self._serve(*by_fd[fd])
            elif fd in tcp_fd:
                self._accept(*tcp_fd[fd])
            elif watch is not None and fd == watch.fd:
                watch.wait(0)  # drains it; the next pass rebinds

    def _bind_all(self) -> None:
        wanted = self.networks()
        changed = not self._told
        for network in [n for n in self.sockets if wanted.get(n) != self.sockets[n][1:]]:
            self.sockets.pop(network)[0].close()
            self.listeners.pop(network).close()
            changed = True
        for network, (gateway, bridge) in wanted.items():
            if network in self.sockets:
                continue
            try:
                udp, listener = self._bind(gateway)
            except OSError as e:
                logger.warning("dns: cannot answer on %s for network %s: %s", gateway, network, e)
                continue
            self.sockets[network], self.listeners[network] = (udp, gateway, bridge), listener
            changed = True
        if changed and self.on_bound is not None:
            self.on_bound({n: (g, s.getsockname()[1], b, self.listeners[n].getsockname()[1])
                           for n, (s, g, b) in self.sockets.items()})
            self._told = True

    @staticmethod
    def _bind(gateway: str) -> tuple[socket.socket, socket.socket]:
        """A UDP socket (with the arrival interface of each datagram) and a listening TCP socket on
        ``gateway``, each on a free port."""
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            for sock in (udp, listener):
                sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
            udp.setsockopt(socket.SOL_IP, IP_PKTINFO, 1)
            udp.bind((gateway, 0))
            listener.bind((gateway, 0))
            listener.listen(16)
        except OSError:
            udp.close()
            listener.close()
            raise
        udp.setblocking(False)
        listener.setblocking(False)
        return udp, listener

    _told = False

    def _arrived_on(self, ancdata, bridge: str) -> bool:
        for level, kind, data in ancdata:
            if level == socket.SOL_IP and kind == IP_PKTINFO and len(data) >= 4:
                ifindex = struct.unpack("i", data[:4])[0]
                if bridge not in self._ifindex or self._ifindex[bridge] != ifindex:
                    try:
                        self._ifindex[bridge] = socket.if_nametoindex(bridge)
                    except OSError:
                        return False
                return self._ifindex[bridge] == ifindex
        return False

    def _serve(self, sock: socket.socket, network: str, bridge: str) -> None:
        try:
            data, ancdata, _, peer = sock.recvmsg(MAX_QUERY, socket.CMSG_SPACE(12))
        except OSError:
            return
        if not self._arrived_on(ancdata, bridge):
            return  # not from this network's bridge: not ours to answer
        try:
            query = Query(data)
        except ValueError:
            return  # not a question we can answer: no answer, as for garbage
        verdict = self._verdict(network, query, peer[0])
        if verdict is None:
            return
        if isinstance(verdict, bytes):
            self._send(sock, verdict, peer)
        elif not self.relays.acquire(blocking=False):
            self._send(sock, query.answer(rcode=RCODE_SERVFAIL), peer)  # too many at once
        else:
            try:
                threading.Thread(target=self._relay, args=(sock, network, data, query, peer, verdict), daemon=True,
                                 name="berth-dns-relay").start()
            except RuntimeError:
                self.relays.release()
                self._send(sock, query.answer(rcode=RCODE_SERVFAIL), peer)

    def _verdict(self, network: str, query: Query, source: str) -> bytes | Relay | None:
        """The answer (bytes), where to relay it (Relay), or None for no answer at all."""
        try:
            verdict = self.answer(network, query.name, source)
        except Exception:
            logger.exception("dns: lookup of %r on %s failed", query.name, network)
            return query.answer(rcode=RCODE_SERVFAIL)
        if verdict is None:
            return None  # not a container of this network
        records, relay = verdict
        if records:
            return query.answer_names(records) if query.reverse else query.answer(records)
        if not relay:
            return self._fallback(network, query, source) or query.answer(rcode=RCODE_REFUSED)
        if isinstance(relay, list):
            return Relay(relay)  # the asker's own servers
        return Relay([(server, None) for server in self.upstreams()])

    def _relay(self, sock: socket.socket, network: str, data: bytes, query: Query, peer, relay: Relay) -> None:
        try:
            self._send(sock, self._relayed(network, query, peer[0], data, relay, tcp=False), peer)
        finally:
            self.relays.release()

    def _relayed(self, network: str, query: Query, source: str, data: bytes, relay: Relay, *,
                 tcp: bool) -> bytes:
        """The upstreams' answer; when they do not know the name (NXDOMAIN, or no answer), the
        fallback answer (a container's name with a search domain appended), if any."""
        answer = self._ask_upstreams(data, relay.servers, tcp=tcp)
        if answer is None or (len(answer) >= 4 and struct.unpack("!H", answer[2:4])[0] & 0x000F == RCODE_NXDOMAIN):
            fallback = self._fallback(network, query, source)
            if fallback is not None:
                return fallback
        return answer or query.answer(rcode=RCODE_SERVFAIL)

    def _fallback(self, network: str, query: Query, source: str) -> bytes | None:
        try:
            verdict = self.answer(network, query.name, source, True)
        except Exception:
            return None
        if verdict and verdict[0]:
            return query.answer(verdict[0])
        return None

    def _ask_upstreams(self, data: bytes, upstreams: list[tuple[str, str | None]], *, tcp: bool) -> bytes | None:
        """Ask each upstream in turn, from its network namespace (over TCP for a TCP query: its
        answer may be long); the first answer, whatever its code."""
        for upstream, netns in upstreams:
            try:
                family, address = parse_upstream(upstream)
                with socket_in(netns, family, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM) as out:
                    out.settimeout(UPSTREAM_TIMEOUT)
                    out.connect(address)
                    if tcp:
                        out.sendall(struct.pack("!H", len(data)) + data)
                        answer = _read_message(out)
                        if answer is not None:
                            return answer
                        continue
                    out.send(data)
                    while True:
                        answer = out.recv(65535)
                        if answer[:2] == data[:2]:
                            return answer
            except (OSError, ValueError):
                continue
        return None

    def _accept(self, listener: socket.socket, network: str) -> None:
        try:
            conn, peer = listener.accept()
        except OSError:
            return
        try:
            member = self.answer(network, "", peer[0]) is not None
        except Exception:
            member = False
        if not member or not self.tcp_sessions.acquire(blocking=False):
            conn.close()  # not a container of this network (the port is reachable directly), or too many
            return
        try:
            threading.Thread(target=self._tcp_session, args=(conn, peer, network), daemon=True,
                             name="berth-dns-tcp").start()
        except RuntimeError:
            self.tcp_sessions.release()
            conn.close()

    def _tcp_session(self, conn: socket.socket, peer, network: str) -> None:
        """DNS over TCP (RFC 7766): length-prefixed queries, a few per connection. Only a container
        of the network gets answers (a TCP source cannot be spoofed; the nat rule sends only what
        comes from the bridge)."""
        deadline = time.monotonic() + TCP_SESSION
        try:
            with conn:
                for _ in range(TCP_QUERIES):
                    data = _read_message(conn, deadline)
                    if data is None:
                        return
                    try:
                        query = Query(data)
                    except ValueError:
                        return
                    verdict = self._verdict(network, query, peer[0])
                    if verdict is None:
                        return
                    if isinstance(verdict, Relay):
                        verdict = self._relayed(network, query, peer[0], data, verdict, tcp=True)
                    conn.settimeout(max(0.1, deadline - time.monotonic()))
                    conn.sendall(struct.pack("!H", len(verdict)) + verdict)
        except OSError:
            pass
        finally:
            self.tcp_sessions.release()

    @staticmethod
    def _send(sock: socket.socket, answer: bytes, peer) -> None:
        try:
            sock.sendto(answer, peer)
        except OSError as e:
            logger.debug("dns: answer to %s lost: %s", peer, e)
