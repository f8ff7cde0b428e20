"""Networks through the real docker CLI: published ports, user networks by name, links, isolation."""

import ipaddress
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.support.dns import StubDns
from tests.support.net import SERVE, fetch, free_port

pytestmark = pytest.mark.live

ROOT = str(Path(__file__).resolve().parents[2])


def output_of(docker, name, timeout=30) -> str:
    docker("wait", name, timeout=timeout)
    out = docker("logs", name)
    return out.stdout + out.stderr


def test_a_published_port_answers_and_a_taken_one_is_refused(docker):
    tag = uuid.uuid4().hex[:6]
    port = free_port()
    docker("run", "-d", "--name", f"web-{tag}", "-p", f"127.0.0.1:{port}:80", "busybox", "sh", "-c", SERVE)
    assert "hello from" in fetch(f"http://127.0.0.1:{port}/")
    assert f"127.0.0.1:{port}->80/tcp" in docker("ps", "--format", "{{.Ports}}", "--filter", f"name=web-{tag}").stdout
    assert docker("port", f"web-{tag}", "80").stdout.strip() == f"127.0.0.1:{port}"
    taken = docker("run", "-d", "--name", f"web2-{tag}", "-p", f"127.0.0.1:{port}:80", "busybox", "sh", "-c", SERVE,
                   check=False)
    assert taken.returncode != 0 and ("already allocated" in taken.stderr or "in use" in taken.stderr), taken.stderr
    docker("rm", "-f", f"web-{tag}", f"web2-{tag}", check=False)


def test_user_networks_resolve_names_and_stay_apart(docker):
    tag = uuid.uuid4().hex[:6]
    net, other = f"net-{tag}", f"other-{tag}"
    docker("network", "create", net)
    docker("network", "create", other)
    assert net in docker("network", "ls", "--format", "{{.Name}}").stdout
    docker("run", "-d", "--name", f"srv-{tag}", "--network", net, "busybox", "sh", "-c", SERVE)
    time.sleep(0.5)
    docker("run", "-d", "--name", f"cli-{tag}", "--network", net, "busybox", "sh", "-c",
           f"timeout 10 wget -qO- http://srv-{tag}/")
    assert "hello from" in output_of(docker, f"cli-{tag}")
    docker("run", "-d", "--name", f"far-{tag}", "--network", other, "busybox", "sh", "-c",
           f"timeout 5 wget -qO- http://srv-{tag}/ || echo unreachable")
    assert "unreachable" in output_of(docker, f"far-{tag}")
    inspect = json.loads(docker("network", "inspect", net).stdout)[0]
    assert inspect["Name"] == net and any(c["Name"] == f"srv-{tag}" for c in inspect["Containers"].values())
    docker("rm", "-f", f"srv-{tag}", f"cli-{tag}", f"far-{tag}")
    docker("network", "rm", net, other)
    assert net not in docker("network", "ls", "--format", "{{.Name}}").stdout


@pytest.fixture
def upstream_dns():
    """The stub the embedded DNS relays unknown names to (BERTH_DNS_UPSTREAMS, tests/settings.py)."""
    stub = StubDns(os.environ["BERTH_TEST_DNS_UPSTREAM"], {"outside.test": "192.0.2.10"})
    stub.start()
    yield stub
    stub.stop()


def test_the_embedded_dns_answers_names_and_aliases_and_relays_the_rest(docker, upstream_dns):
    """On a user-defined network a container's nameserver is Berth's DNS on the gateway: it answers
    the members' names, aliases and short ids (what nslookup and dig ask, not /etc/hosts), and
    relays other names upstream; the default bridge keeps the host's resolvers."""
    tag = uuid.uuid4().hex[:6]
    net, srv = f"dns-{tag}", f"srv-{tag}"
    inner = f"inner-{tag}"
    try:
        docker("network", "create", net)
        sid = docker("run", "-d", "--name", srv, "--network", net, "--network-alias", f"alias-{tag}", "busybox",
                     "sleep", "300").stdout.strip()
        inspect = json.loads(docker("inspect", srv).stdout)[0]
        ip = inspect["NetworkSettings"]["Networks"][net]["IPAddress"]
        gateway = inspect["NetworkSettings"]["Networks"][net]["Gateway"]
        # A name the upstream knows wins over a container's with the search domain taken off.
        docker("run", "-d", "--name", f"other-{tag}", "--network", net, "busybox", "sleep", "300")
        upstream_dns.names[f"other-{tag}.corp.example"] = "192.0.2.30"
        script = (f"cat /etc/resolv.conf; for n in {srv} ALIAS-{tag} {sid[:12]} {srv}.{net} outside.test "
                  f"nowhere-{tag}.test other-{tag}.corp.example; "
                  f"do echo \"== $n\"; nslookup -type=a $n; done; echo '== reverse'; nslookup {ip}")
        # A search domain, as DHCP often sets one: busybox's nslookup then asks <name>.corp.example.
        out = docker("run", "--rm", "--network", net, "--dns-search", "corp.example", "busybox", "sh", "-c", script,
                     check=False).stdout
        resolv, _, answers = out.partition("== ")
        assert f"nameserver {gateway}" in resolv and "ndots:0" in resolv and "search corp.example" in resolv, out
        found = {}
        for block in ("== " + answers).split("== ")[1:]:
            name, _, rest = block.partition("\n")
            found[name] = [line.split()[-1] for line in rest.splitlines()[2:] if line.startswith("Address")]
        assert found[srv] == [ip] and found[f"ALIAS-{tag}"] == [ip] and found[sid[:12]] == [ip], out
        assert found[f"{srv}.{net}"] == [ip] and found[f"other-{tag}.corp.example"] == ["192.0.2.30"], out
        assert found["outside.test"] == ["192.0.2.10"] and "outside.test" in upstream_dns.asked, out
        assert found[f"nowhere-{tag}.test"] == [] and "NXDOMAIN" in out, out
        assert f"name = {srv}.{net}" in out.split("== reverse", 1)[1], out  # PTR, as Docker's DNS answers
        bridge = docker("run", "--rm", "busybox", "cat", "/etc/resolv.conf").stdout
        assert f"nameserver {gateway}" not in bridge and "ndots:0" not in bridge, bridge
        # An internal network has no way out: its members answer, other names are refused, not relayed.
        docker("network", "create", "--internal", inner)
        docker("network", "connect", inner, srv)
        asked = len(upstream_dns.asked)
        out = docker("run", "--rm", "--network", inner, "busybox", "sh", "-c",
                     f"nslookup -type=a {srv}; nslookup -type=a outside.test", check=False).stdout
        inner_ip = json.loads(docker("inspect", srv).stdout)[0]["NetworkSettings"]["Networks"][inner]["IPAddress"]
        assert f"Address: {inner_ip}" in out and "REFUSED" in out and "192.0.2.10" not in out, out
        assert len(upstream_dns.asked) == asked
        # Leaving the network its resolv.conf names: it now names the DNS of the one it is still on.
        inner_gw = json.loads(docker("network", "inspect", inner).stdout)[0]["IPAM"]["Config"][0]["Gateway"]
        assert f"nameserver {gateway}" in docker("exec", srv, "cat", "/etc/resolv.conf").stdout
        docker("network", "disconnect", net, srv)
        resolv = docker("exec", srv, "cat", "/etc/resolv.conf").stdout
        assert f"nameserver {inner_gw}" in resolv and f"nameserver {gateway}" not in resolv, resolv
        # A resolv.conf edited inside the container is its own: a connect leaves it alone.
        docker("exec", srv, "sh", "-c", "echo 'nameserver 192.0.2.53' > /etc/resolv.conf")
        docker("network", "connect", net, srv)
        assert docker("exec", srv, "cat", "/etc/resolv.conf").stdout == "nameserver 192.0.2.53\n"
    finally:
        docker("rm", "-f", srv, f"other-{tag}", check=False)
        docker("network", "rm", net, inner, check=False)


def test_dns_on_a_user_network_relays_to_the_containers_own_servers(docker, upstream_dns):
    """``--dns`` on a user-defined network: the container's nameserver is still the embedded DNS
    (names of the network answer), which relays other names to the --dns servers, as Docker's. A
    --dns server on the container's own loopback is written as it is (the DNS cannot ask it)."""
    tag = uuid.uuid4().hex[:6]
    net, srv = f"owndns-{tag}", f"srv-{tag}"
    own = None
    try:
        docker("network", "create", net)
        docker("run", "-d", "--name", srv, "--network", net, "busybox", "sleep", "300")
        gateway = json.loads(docker("network", "inspect", net).stdout)[0]["IPAM"]["Config"][0]["Gateway"]
        # The container's own server: reached from the host on the gateway's port 53 (nothing else
        # binds it there; the container's own packets to it go to the embedded DNS).
        own = StubDns(f"{gateway}:53", {"mine.test": "192.0.2.20"})
        own.start()
        asked = len(upstream_dns.asked)
        out = docker("run", "--rm", "--network", net, "--dns", gateway, "--dns-search", ".", "busybox", "sh",
                     "-c", f"cat /etc/resolv.conf; nslookup -type=a mine.test; nslookup -type=a {srv}",
                     check=False).stdout
        assert f"nameserver {gateway}" in out and "ndots:0" in out, out
        assert "Address: 192.0.2.20" in out and "mine.test" in own.asked, out
        assert re.search(rf"Name:\s+{srv}", out), out
        assert len(upstream_dns.asked) == asked  # not the default upstream
        # A server on the container's own loopback: asked from the container's network namespace.
        box = f"box-{tag}"
        docker("run", "-d", "--name", box, "--network", net, "--dns", "127.0.0.1", "--dns-search", ".", "busybox",
               "sleep", "300")
        pid = docker("inspect", "-f", "{{.State.Pid}}", box).stdout.strip()
        inside = subprocess.Popen(
            ["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, "-c",
             "import time; from tests.support.dns import StubDns; "
             "StubDns('127.0.0.1:53', {'loop.test': '192.0.2.40'}).start(); time.sleep(60)"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
        try:
            out = ""
            for _ in range(20):  # until the stub inside listens
                out = docker("exec", box, "sh", "-c", "cat /etc/resolv.conf; nslookup -type=a loop.test",
                             check=False).stdout
                if "192.0.2.40" in out:
                    break
                time.sleep(0.25)
            assert f"nameserver {gateway}" in out and "Address: 192.0.2.40" in out, out
        finally:
            inside.kill()
            inside.wait()
    finally:
        if own is not None:
            own.stop()
        docker("rm", "-f", srv, f"box-{tag}", check=False)
        docker("network", "rm", net, check=False)


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def test_the_embedded_dns_answers_only_its_own_network(docker, upstream_dns):
    """Network B's DNS does not answer a container of network A, nor the host itself (its socket
    serves only what comes in on B's bridge); nothing holds port 53, so a container can publish it."""
    import socket
    import subprocess

    tag = uuid.uuid4().hex[:6]
    net_a, net_b, srv = f"dnsa-{tag}", f"dnsb-{tag}", f"srvb-{tag}"
    try:
        docker("network", "create", net_a)
        docker("network", "create", net_b)
        docker("run", "-d", "--name", srv, "--network", net_b, "busybox", "sleep", "300")
        gw_b = json.loads(docker("network", "inspect", net_b).stdout)[0]["IPAM"]["Config"][0]["Gateway"]
        out = docker("run", "--rm", "--network", net_a, "busybox", "sh", "-c",
                     f"timeout 8 nslookup -type=a {srv} {gw_b}; echo exit=$?", check=False, timeout=60).stdout
        assert "exit=0" not in out and "Name:" not in out, out
        # The redirect's target, asked from the host: no answer either.
        rules = subprocess.run(["iptables", "-t", "nat", "-S"], check=True, capture_output=True, text=True).stdout
        target = next(r.split("--to-destination ")[1].split()[0] for r in rules.splitlines()
                      if f"-d {gw_b}/32" in r and "--to-destination" in r)
        host, port = target.split(":")
        query = (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + bytes([len(srv)]) + srv.encode()
                 + b"\x00\x00\x01\x00\x01")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1.5)
            s.sendto(query, (host, int(port)))
            with pytest.raises(OSError):  # timeout (or refused): no answer
                s.recvfrom(512)
        if _port_free(53):
            published = docker("run", "-d", "--name", f"p53-{tag}", "-p", "127.0.0.1:53:53/udp", "busybox", "sleep",
                               "300", check=False)
            assert published.returncode == 0, published.stderr
    finally:
        docker("rm", "-f", srv, f"p53-{tag}", check=False)
        docker("network", "rm", net_a, net_b, check=False)


def test_run_with_a_fixed_address_and_a_network_alias(docker):
    tag = uuid.uuid4().hex[:6]
    net, web = f"fix-{tag}", f"web-{tag}"
    docker("network", "create", net)
    subnet = json.loads(docker("network", "inspect", net).stdout)[0]["IPAM"]["Config"][0]["Subnet"]
    address = str(ipaddress.IPv4Network(subnet).network_address + 50)
    try:
        docker("run", "-d", "--name", web, "--network", net, "--ip", address, "--network-alias", "svc",
               "busybox", "sh", "-c", SERVE)
        settings = json.loads(docker("inspect", web).stdout)[0]["NetworkSettings"]["Networks"][net]
        assert settings["IPAddress"] == address and "svc" in settings["Aliases"]
        time.sleep(0.5)
        result = docker("run", "--rm", "--network", net, "busybox", "timeout", "10", "wget", "-qO-", "http://svc/")
        assert result.stdout.startswith("hello from"), result.stderr
        # The same address again fails at start; on the default bridge it is refused, as Docker words it.
        taken = docker("run", "--rm", "--network", net, "--ip", address, "busybox", "true", check=False)
        assert taken.returncode != 0 and "Address already in use" in taken.stderr, taken.stderr
        bridge = docker("run", "--rm", "--ip", address, "busybox", "true", check=False)
        assert "user specified IP address is supported on user defined networks only" in bridge.stderr
        # Once its holder stopped, the address is free at once (its release may still be queued).
        docker("stop", "-t", "0", web)
        for _ in range(3):
            again = docker("run", "--rm", "--network", net, "--ip", address, "busybox", "true", check=False)
            assert again.returncode == 0, again.stderr
    finally:
        docker("rm", "-f", web, check=False)
        docker("network", "rm", net, check=False)


def test_link_writes_hosts_and_link_variables(docker):
    tag = uuid.uuid4().hex[:6]
    docker("run", "-d", "--name", f"db-{tag}", "--expose", "5432", "busybox", "sleep", "300")
    docker("run", "-d", "--name", f"app-{tag}", "--link", f"db-{tag}:database", "busybox", "sh", "-c",
           "cat /etc/hosts; env | sort")
    out = output_of(docker, f"app-{tag}")
    assert "database" in out
    assert "DATABASE_PORT_5432_TCP=tcp://" in out
    docker("rm", "-f", f"db-{tag}", f"app-{tag}")
