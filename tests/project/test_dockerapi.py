"""The Docker Engine API base: /_ping, /version, /info answer as dockerd does, in the spec's shapes."""

import pytest
from django.contrib.auth.models import User

from project.models import ApiToken
from tests import dockerspec


@pytest.fixture
def api(client, db):
    user = User.objects.create_user("api-user")
    _, clear = ApiToken.objects.create_token(user)
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {clear}"
    return client


def test_ping_answers_ok_with_the_api_version(api):
    response = api.get("/_ping")
    assert response.status_code == 200
    assert response.content == b"OK"
    assert response["Api-Version"] == "1.41"
    assert response["Ostype"] == "linux"


def test_ping_answers_head(api):
    response = api.head("/_ping")
    assert response.status_code == 200
    assert response["Api-Version"] == "1.41"


@pytest.mark.parametrize("path", ["/version", "/v1.41/version", "/v1.40/version"])
def test_version_matches_the_spec(api, path):
    response = api.get(path)
    assert response.status_code == 200
    body = response.json()
    dockerspec.validate(body, "/version")
    assert body["ApiVersion"] == "1.41"
    names = [c["Name"] for c in body["Components"]]
    assert names == ["Engine", "runc", "crun", "conmon"]  # setup.sh installs both runtimes
    for component in body["Components"][1:3]:
        version = component["Version"]
        assert version and version[0].isdigit(), "each runtime's version comes from its installed binary"


def test_info_matches_the_spec(api):
    response = api.get("/v1.41/info")
    assert response.status_code == 200
    body = response.json()
    dockerspec.validate(body, "/info")
    assert body["Driver"] == "overlay2"
    assert body["CgroupVersion"] in ("1", "2")
    assert body["KernelVersion"]
    assert body["Images"] == 0 and body["Containers"] == 0
    assert set(body["Runtimes"]) == {"runc", "crun"} and body["DefaultRuntime"] in body["Runtimes"]


def test_a_too_new_api_version_is_refused_as_dockerd_does(api):
    response = api.get("/v1.99/version")
    assert response.status_code == 400
    assert response.json()["message"] == "client version 1.99 is too new. Maximum supported API version is 1.41"


def test_a_wrong_method_is_refused(api):
    assert api.delete("/v1.41/info").status_code == 405
