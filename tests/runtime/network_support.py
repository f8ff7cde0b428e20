"""Helpers of the network tests (test_network.py, test_network_docker_rules.py): free subnets and
ports, a NetworkManager on per-run bridges, HTTP on loopback, commands in a container."""

import ipaddress
import os
import random
import socket
import time

from runtime.network import NetworkManager
from runtime.network.manager import host_routes

HTTPD = "mkdir -p /www && echo \"hello from $(hostname)\" > /www/index.html && exec httpd -f -p 80 -h /www"


def free_subnet(prefix: int) -> str:
    routes = [r for r, _ in host_routes()]
    while True:
        candidate = ipaddress.ip_network(f"10.{random.randint(200, 249)}.{random.randint(0, 255) if prefix > 16 else 0}.0/{prefix}")
        if not any(candidate.overlaps(r) for r in routes):
            return str(candidate)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_manager(config, store, tag):
    return NetworkManager(config, store, bridge=f"bt{tag}0", subnet=free_subnet(24), user_subnets=free_subnet(16),
                          bridge_prefix=f"bt{tag}-", ipam_dir=os.path.join(os.path.dirname(config.root), "ipam"))


def http_get(port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            return data.decode().partition("\r\n\r\n")[2]
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def exec_out(store, cid, *cmd) -> tuple[int, str]:
    code, out, err = store.exec(cid, list(cmd), timeout=30)
    return code, (out + err).decode()


def wait_httpd(store, cid):
    deadline = time.monotonic() + 5
    while exec_out(store, cid, "sh", "-c", "netstat -ltn | grep -q ':80 '")[0] != 0:
        assert time.monotonic() < deadline, "httpd did not start"
        time.sleep(0.05)


def lease_files(net, bridge) -> list[str]:
    d = os.path.join(net.ipam_dir, bridge)
    return [e for e in os.listdir(d) if e[0].isdigit()] if os.path.isdir(d) else []
