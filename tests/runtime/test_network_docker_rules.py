"""Berth beside a dockerd with its own default bridge and iptables rules (issue 5).

dockerd (Debian's docker.io; skipped when it is not installed) runs privately here: its own bridge
on a free /24 made beforehand, ``--iptables=true --ip-masq=true``, data root, exec root and socket
in the module's temp dir (tests/support/dockerd.py, shared with bench/run_bridge.py). Its FORWARD
jumps then come before the CNI firewall plugin's, it may set the FORWARD policy to DROP, and its nat
PREROUTING/OUTPUT jumps come before portmap's. Berth's containers must still be published on
loopback, reach each other on one network and not across two. At the end every rule, chain and
bridge dockerd made is removed, and the test checks that nothing is left.

Traffic only goes to 127.0.0.1 and to the namespaces and bridges these tests and dockerd make.
"""

import io
import json
import os
import shutil
import subprocess
import time

import pytest

from tests.runtime.network_support import HTTPD, exec_out, free_port, http_get, wait_httpd
from tests.runtime.test_network import ctr, env, net, networks, store
from tests.support.dockerd import DockerBridge, PrivateDockerd, chains, dockerd_available

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/lib/cni/bridge"),
                       reason="runs real containers and CNI: needs root and containernetworking-plugins"),
    pytest.mark.skipif(not dockerd_available(), reason="dockerd is not installed (Debian's docker.io)"),
]

ENGINE_DIR_PREFIX = "bd-"
FIXTURES = (ctr, env, net, networks, store)  # test_network's, for this module's own engine


def docker_run_httpd(dockerd: PrivateDockerd, engine, port: int) -> str:
    """Give dockerd Berth's busybox and run ``httpd`` in it published on 127.0.0.1:port; the id."""
    archive = io.BytesIO()
    engine.images.save(["busybox:latest"], archive)
    status, body = dockerd.api("POST", "/images/load?quiet=1", archive.getvalue())
    assert status == 200, body
    status, body = dockerd.api("POST", "/containers/create", {
        "Image": "busybox:latest", "Cmd": ["sh", "-c", HTTPD.replace("hello from", "docker says")],
        "ExposedPorts": {"80/tcp": {}},
        "HostConfig": {"PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}}})
    assert status == 201, body
    cid = json.loads(body)["Id"]
    status, body = dockerd.api("POST", f"/containers/{cid}/start")
    assert status == 204, body
    return cid


@pytest.fixture
def docker_beside(base):
    """A private dockerd with its bridge and iptables rules; afterwards, none of it is left."""
    bridge = DockerBridge(prefix="bdock")
    dockerd = None
    try:
        dockerd = PrivateDockerd(os.path.join(base, "dockerd"), bridge)
        # dockerd sets the FORWARD policy to DROP when it is the one that turns ip_forward on (a
        # host's first start); here forwarding is on already, so the test does it in its place.
        # bridge.remove() puts the policy back.
        subprocess.run(["iptables", "-w", "-P", "FORWARD", "DROP"], check=True)
        yield dockerd, bridge
    finally:
        if dockerd is not None:
            dockerd.stop()
        left = bridge.remove()
        shutil.rmtree(os.path.join(base, "dockerd"), ignore_errors=True)
    assert not [item for item in left if "another dockerd runs" not in item], left
    assert not os.path.exists(f"/sys/class/net/{bridge.name}")
    assert bridge.policy_before in ("", subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True,
                                                       text=True).stdout.split()[2])
    for table in ("filter", "nat"):
        dump = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True).stdout
        assert bridge.name not in dump and str(bridge.subnet) not in dump


def test_berth_keeps_working_beside_dockerd_and_its_iptables_rules(env, store, net, ctr, networks, docker_beside):
    engine = env[0]
    dockerd, bridge = docker_beside
    # dockerd's rules are there, ahead of the CNI plugins' own.
    assert {"DOCKER-USER", "DOCKER-ISOLATION-STAGE-1"} <= chains("filter") and "DOCKER" in chains("nat")
    forward = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True).stdout
    assert f"-o {bridge.name} -j DOCKER" in forward and "-P FORWARD DROP" in forward, forward
    # A Docker container publishes a port of its own on loopback.
    docker_port = free_port()
    docker_run_httpd(dockerd, engine, docker_port)
    # docker-proxy takes the connection before httpd listens, and closes it: an empty answer.
    deadline = time.monotonic() + 15
    while not (answer := http_get(docker_port, timeout=15)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert answer.startswith("docker says")
    # Berth: a port published on 127.0.0.1 answers (portmap's DNAT after Docker's nat jumps).
    port = free_port()
    web = ctr("sh", "-c", HTTPD, port_bindings={"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]})
    assert http_get(port) == f"hello from {web.id[:12]}\n"
    # Two user networks: members of one reach each other by name (bridged traffic crosses FORWARD,
    # where dockerd's jumps come first), and nothing crosses from the other.
    networks("harbour")
    networks("lagoon")
    srv = ctr("sh", "-c", HTTPD, name="harboursrv", network_mode="harbour")
    mate = ctr("sleep", "1000", network_mode="harbour")
    stranger = ctr("sleep", "1000", network_mode="lagoon")
    wait_httpd(store, srv.id)
    code, out = exec_out(store, mate.id, "timeout", "5", "wget", "-qO-", "http://harboursrv/")
    assert code == 0 and out == f"hello from {srv.id[:12]}\n", out
    srv_ip = store.inspect(srv.id)["NetworkSettings"]["Networks"]["harbour"]["IPAddress"]
    code, out = exec_out(store, stranger.id, "timeout", "3", "wget", "-qO-", f"http://{srv_ip}/")
    assert code != 0 and "hello" not in out
    # Both engines' published ports still answer, each its own container.
    assert http_get(port) == f"hello from {web.id[:12]}\n"
    assert http_get(docker_port).startswith("docker says")
