"""Networks through the real docker CLI: published ports, user networks by name, links, isolation."""

import ipaddress
import json
import time
import uuid

import pytest

from tests.support.net import SERVE, fetch, free_port

pytestmark = pytest.mark.live


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
