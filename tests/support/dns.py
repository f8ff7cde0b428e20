"""A stub DNS server on loopback: the upstream the embedded DNS relays unknown names to in tests."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from runtime.network.dns import RCODE_NXDOMAIN, Query

_RESERVED: dict[str, tuple[socket.socket, socket.socket]] = {}


def reserve(host: str = "127.0.0.1") -> str:
    """``host:port`` with a UDP and a TCP socket already bound there (kept until a StubDns takes
    them), so that nothing else gets the port between the settings naming it and the stub."""
    while True:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((host, 0))
        port = udp.getsockname()[1]
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind((host, port))
        except OSError:
            udp.close()
            tcp.close()
            continue
        address = f"{host}:{port}"
        _RESERVED[address] = (udp, tcp)
        return address


def _bound(address: str) -> tuple[socket.socket, socket.socket]:
    if address in _RESERVED:
        return _RESERVED.pop(address)
    host, _, port = address.rpartition(":")
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((host, int(port)))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((host, int(port)))
    return udp, tcp


class StubDns(threading.Thread):
    """Answers ``names`` ({name: address}) with their address, anything else NXDOMAIN, over UDP and
    TCP on one address; ``asked`` lists the names asked, with ``tcp:`` before those asked over TCP."""

    def __init__(self, address: str, names: dict[str, str]):
        super().__init__(daemon=True, name="stub-dns")
        self.sock, self.listener = _bound(address)
        self.sock.settimeout(0.2)
        self.listener.listen(8)
        self.listener.settimeout(0.2)
        self.names, self.asked = names, []
        self.stopping = threading.Event()
        self.tcp = threading.Thread(target=self._serve_tcp, daemon=True, name="stub-dns-tcp")

    def answer(self, data: bytes, tcp: bool = False) -> bytes:
        query = Query(data)
        self.asked.append(("tcp:" if tcp else "") + query.name)
        address = self.names.get(query.name)
        return query.answer([address]) if address else query.answer(rcode=RCODE_NXDOMAIN)

    def run(self) -> None:
        self.tcp.start()
        while not self.stopping.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                continue
            with contextlib.suppress(ValueError, OSError):
                self.sock.sendto(self.answer(data), peer)

    def _serve_tcp(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            with conn, contextlib.suppress(ValueError, OSError, struct.error):
                conn.settimeout(2)
                size = struct.unpack("!H", conn.recv(2))[0]
                data = b""
                while len(data) < size:
                    data += conn.recv(size - len(data)) or b"!"
                answer = self.answer(data, tcp=True)
                conn.sendall(struct.pack("!H", len(answer)) + answer)

    def stop(self) -> None:
        """Stop answering; the port stays reserved (a later stub of the session takes it again)."""
        self.stopping.set()
        self.join(2)
        self.tcp.join(2)
        address = f"{self.sock.getsockname()[0]}:{self.sock.getsockname()[1]}"
        _RESERVED[address] = (self.sock, self.listener)
