"""Fixtures of the live web tests."""

import subprocess

import docker as docker_sdk
import pytest


@pytest.fixture
def docker(berth, tmp_path):
    """Run the real docker CLI against the live Berth; return the CompletedProcess.

    ``check`` asserts exit 0 (with the output and Berth's logs when not); ``binary`` keeps stdout as
    bytes; ``docker.env`` is the environment the CLI runs with (a test may add to it).
    """
    env = berth.docker_env(tmp_path / "docker")

    def run(*args, timeout=180, check=True, binary=False):
        result = subprocess.run(["docker", *args], env=env, capture_output=True, text=not binary, timeout=timeout)
        if check:
            assert result.returncode == 0, f"docker {' '.join(args)}: {result.stdout}{result.stderr}\n{berth.logs()}"
        return result

    run.env = env
    return run


@pytest.fixture
def sdk(berth):
    """The Docker SDK for Python on the live Berth, with the token."""
    client = docker_sdk.DockerClient(base_url=f"tcp://127.0.0.1:{berth.port}", version="1.41", timeout=120)
    client.api.headers["Authorization"] = f"Bearer {berth.token}"
    yield client
    client.close()
