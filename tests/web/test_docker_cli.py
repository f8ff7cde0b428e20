"""The real docker CLI against a live Berth."""

import json
import subprocess

import pytest

pytestmark = pytest.mark.live


def docker(berth, tmp_path, *args, token=True, timeout=60):
    env = berth.docker_env(tmp_path / "docker")
    if not token:
        (tmp_path / "docker" / "config.json").write_text("{}")
    return subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_docker_version_shows_berths_server(berth, tmp_path):
    result = docker(berth, tmp_path, "version")
    assert result.returncode == 0, result.stderr + berth.logs()
    server = result.stdout.split("Server:", 1)[1]
    assert "Berth" in server
    assert "API version:      1.41" in server
    assert "runc:" in server and "conmon:" in server


def test_docker_version_as_json(berth, tmp_path):
    result = docker(berth, tmp_path, "version", "--format", "{{json .Server}}")
    assert result.returncode == 0, result.stderr
    server = json.loads(result.stdout)
    assert server["ApiVersion"] == "1.41"
    assert {c["Name"] for c in server["Components"]} == {"Engine", "runc", "crun", "conmon"}


def test_docker_info_shows_the_host_and_engine(berth, tmp_path):
    result = docker(berth, tmp_path, "info")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Storage Driver: overlay2" in out
    assert "Cgroup Version:" in out
    assert "Kernel Version:" in out
    status, info = berth.json("GET", "/v1.41/info")
    assert f"Images: {info['Images']}" in out


def test_docker_without_a_token_is_refused(berth, tmp_path):
    result = docker(berth, tmp_path, "version", token=False)
    assert result.returncode != 0
    assert "authentication required" in result.stderr
