"""The Docker SDK for Python drives Berth's containers."""

import uuid

import docker as docker_sdk
import pytest

pytestmark = pytest.mark.live


def test_the_sdk_runs_lists_logs_stops_and_removes(sdk):
    name = "sdk-" + uuid.uuid4().hex[:6]
    container = sdk.containers.run("busybox", ["sh", "-c", "echo from-sdk; sleep 300"], name=name, detach=True,
                                   environment={"A": "b"}, mem_limit="64m", labels={"team": "berth"})
    assert container.status in ("created", "running")
    container.reload()
    assert container.status == "running"
    assert container.attrs["Config"]["Labels"]["team"] == "berth"
    assert any(c.name == name for c in sdk.containers.list(filters={"label": "team=berth"}))
    for _ in range(50):
        if b"from-sdk" in container.logs():
            break
    assert b"from-sdk" in container.logs()
    assert container.top()["Processes"]
    container.stop(timeout=1)
    container.reload()
    assert container.status == "exited"
    assert container.wait()["StatusCode"] in (137, 143)
    container.remove()
    with pytest.raises(docker_sdk.errors.NotFound):
        sdk.containers.get(name)


def test_the_sdk_gets_dockers_errors(sdk):
    with pytest.raises(docker_sdk.errors.NotFound, match="No such container"):
        sdk.containers.get("no-such-container-here")
    name = "sdk-" + uuid.uuid4().hex[:6]
    sdk.containers.create("busybox", "true", name=name)
    with pytest.raises(docker_sdk.errors.APIError) as conflict:
        sdk.containers.create("busybox", "true", name=name)
    assert conflict.value.response.status_code == 409
    sdk.containers.get(name).remove()
