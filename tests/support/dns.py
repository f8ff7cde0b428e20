"""A stub DNS server on loopback: the upstream the embedded DNS relays unknown names to in tests."""

from __future__ import annotations

import contextlib
import socket
import threading

from runtime.network.dns import RCODE_NXDOMAIN, Query


class StubDns(threading.Thread):
    """Answers ``names`` ({name: address}) with their address, anything else NXDOMAIN; counts queries."""

    def __init__(self, address: str, names: dict[str, str]):
        super().__init__(daemon=True, name="stub-dns")
        host, _, port = address.rpartition(":")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, int(port)))
        self.sock.settimeout(0.2)
        self.names, self.asked = names, []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                continue
            with contextlib.suppress(ValueError, OSError):
                query = Query(data)
                self.asked.append(query.name)
                address = self.names.get(query.name)
                self.sock.sendto(query.answer([address]) if address else query.answer(rcode=RCODE_NXDOMAIN), peer)

    def stop(self) -> None:
        self.stopping.set()
        self.join(2)
        self.sock.close()
