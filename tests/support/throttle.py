"""A TCP proxy on loopback that slows a registry down, so tests can act in the middle of a pull."""

from __future__ import annotations

import socket
import threading
import time


class ThrottledProxy:
    """Forwards 127.0.0.1:<port> to ``target`` ("host:port"), sending at most ``rate`` bytes/s back.

    ``.host`` is the "127.0.0.1:<port>" to use as the registry address.
    """

    def __init__(self, target: str, rate: int = 1 << 20):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.rate = rate
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(32)
        self.host = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.bytes_sent = 0
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self.rate), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, rate: int | None):
        chunk = 16384
        try:
            while True:
                data = src.recv(chunk)
                if not data:
                    break
                dst.sendall(data)
                if rate:
                    self.bytes_sent += len(data)
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def stop(self):
        self._stopped = True
        self.listener.close()
