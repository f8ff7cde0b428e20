"""docker-compose (Debian's 1.29, a client of the Docker API) runs a two-service project on Berth:
its network, containers that find each other by service name over DNS, attach, stop and removal."""

import ipaddress
import re
import shutil
import subprocess
import uuid

import pytest

pytestmark = pytest.mark.live

PROJECT = """\
version: "3.8"
services:
  web:
    image: busybox
    command: sh -c "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 80 -h /www"
  client:
    image: busybox
    depends_on: [web]
    command: sh -c "for i in 1 2 3 4 5 6 7 8 9 10; do wget -qO- http://web/ && break; sleep 0.5; done;
                    nslookup -type=a web | grep -A1 '^Name'"
"""


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_compose_up_runs_a_project_whose_services_find_each_other(docker, tmp_path):
    (tmp_path / "docker-compose.yml").write_text(PROJECT)
    name = "cmp" + uuid.uuid4().hex[:6]

    def compose(*args, timeout=180):
        return subprocess.run(["docker-compose", "-p", name, *args], cwd=tmp_path, env=docker.env,
                              capture_output=True, text=True, timeout=timeout)

    try:
        up = compose("up", "--abort-on-container-exit", "--exit-code-from", "client")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "hello-from-web" in up.stdout, up.stdout
        # "web" over DNS (the service's alias on the project network): an address of that network.
        subnet = docker("network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
                        f"{name}_default").stdout.strip()
        found = re.search(r"Address: (\d+\.\d+\.\d+\.\d+)", up.stdout)
        assert found and ipaddress.ip_address(found[1]) in ipaddress.ip_network(subnet), up.stdout
    finally:
        down = compose("down", "--timeout", "1")
    assert down.returncode == 0, down.stdout + down.stderr
    assert name not in docker("ps", "-a", "--format", "{{.Names}}").stdout
    assert f"{name}_default" not in docker("network", "ls", "--format", "{{.Name}}").stdout
