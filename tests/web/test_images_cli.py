"""Images through the real docker CLI and the Docker SDK for Python, against a live Berth and a real registry."""

import json
import subprocess

import pytest

from tests import dockerspec

pytestmark = pytest.mark.live


def test_docker_pull_shows_progress_and_the_image_appears(docker, unique_image):
    ref = unique_image("cold").references[0]
    out = docker("pull", ref).stdout
    assert "Pull complete" in out
    assert f"Downloaded newer image for {ref}" in out
    images = docker("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").stdout
    assert ref in images
    again = docker("pull", ref).stdout
    assert f"Image is up to date for {ref}" in again


def test_docker_pull_of_a_missing_image_fails_clearly(docker, registry):
    result = docker("pull", f"{registry.host}/library/nothing:here", check=False)
    assert result.returncode != 0
    assert "manifest unknown" in result.stderr or "manifest unknown" in result.stdout


def test_docker_pull_of_an_invalid_reference_fails_clearly(docker):
    result = docker("pull", "Not/Valid:ref", check=False)
    assert result.returncode != 0
    assert "invalid" in result.stderr.lower()


def test_inspect_history_tag_and_rmi(docker, berth, unique_image):
    image = unique_image("rmi")
    ref = image.references[0]
    docker("pull", ref)
    inspect = json.loads(docker("image", "inspect", ref).stdout)[0]
    assert inspect["Id"] == image.config_descriptor.digest
    assert len(inspect["RootFS"]["Layers"]) == 2
    status, body = berth.json("GET", f"/v1.41/images/{ref}/json")
    dockerspec.validate(body, "/images/{name}/json")
    history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", ref).stdout.splitlines()
    assert history[0].startswith("add /etc/marker ")
    docker("tag", ref, "berth-test/renamed:v9")
    assert "berth-test/renamed:v9" in docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout
    untag = docker("rmi", "berth-test/renamed:v9").stdout
    assert "Untagged: berth-test/renamed:v9" in untag
    removed = docker("rmi", ref).stdout
    assert f"Untagged: {ref}" in removed and "Deleted: sha256:" in removed
    assert ref not in docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout
    result = docker("image", "inspect", ref, check=False)
    assert result.returncode != 0 and "No such image" in result.stderr


def test_the_images_list_matches_the_spec(berth, busybox_image, docker):
    docker("pull", busybox_image.references[0])
    status, body = berth.json("GET", "/v1.41/images/json")
    assert status == 200
    dockerspec.validate(body, "/images/json")
    assert any(busybox_image.references[0] in s["RepoTags"] for s in body)


def test_docker_search_searches_a_plain_registrys_catalog(docker, registry, busybox_image):
    out = docker("search", f"{registry.host}/busy").stdout
    assert "library/busybox" in out


def test_the_sdk_pulls_lists_and_removes(sdk, multiarch_image):
    ref = multiarch_image.references[0]
    image = sdk.images.pull(ref)
    assert ref in image.tags
    assert any(ref in i.tags for i in sdk.images.list())
    sdk.images.remove(ref)
    assert not any(ref in i.tags for i in sdk.images.list())


def test_save_rmi_load_gives_back_the_same_image(docker, busybox_image, tmp_path):
    ref = busybox_image.references[1]
    docker("pull", ref)
    image_id = docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()
    archive = tmp_path / "saved.tar"
    docker("save", "-o", str(archive), ref)
    assert archive.stat().st_size > 100_000
    docker("rmi", ref)
    out = docker("load", "-i", str(archive)).stdout
    assert f"Loaded image: {ref}" in out
    assert docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip() == image_id


def test_load_of_a_broken_archive_fails_and_adds_nothing(docker, tmp_path):
    before = docker("images", "-q").stdout
    archive = tmp_path / "broken.tar"
    archive.write_bytes(b"this is not a tar archive" * 100)
    result = docker("load", "-i", str(archive), check=False)
    assert result.returncode != 0
    assert docker("images", "-q").stdout == before


def test_docker_import_with_changes(docker, tmp_path):
    import io
    import tarfile

    archive = tmp_path / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        data = b"imported!\n"
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    out = docker("import", "--change", 'CMD ["cat", "/hello.txt"]', "--change", "ENV GREETING=hi",
                 "-m", "from a test", str(archive), "imported/test:v1").stdout
    assert out.strip().startswith("sha256:")
    config = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", "imported/test:v1").stdout)
    assert config["Cmd"] == ["cat", "/hello.txt"]
    assert "GREETING=hi" in config["Env"]
    history = docker("history", "--format", "{{.Comment}}", "imported/test:v1").stdout
    assert "from a test" in history


def wait_for_job(berth, kind: str, status: str, timeout: float = 30):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, body = berth.json("GET", f"/api/jobs/?kind={kind}")
        for job in body["results"]:
            if job["status"] == status:
                return job
        time.sleep(0.2)
    raise AssertionError(f"no {kind} job became {status}: {body}")


def test_ctrl_c_on_docker_pull_cancels_the_pull(berth, tmp_path, big_image, slow_registry):
    import signal
    import time

    ref = f"{slow_registry.host}/test/big:latest"
    env = berth.docker_env(tmp_path / "docker")
    child = subprocess.Popen(["docker", "pull", ref], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    running = wait_for_job(berth, "pull", "running")
    deadline = time.monotonic() + 20
    while not berth.json("GET", f"/api/jobs/{running['id']}/")[1]["progress"] and time.monotonic() < deadline:
        time.sleep(0.2)
    child.send_signal(signal.SIGINT)
    child.wait(20)
    while time.monotonic() < deadline + 20:
        job = berth.json("GET", f"/api/jobs/{running['id']}/")[1]
        if job["status"] != "running":
            break
        time.sleep(0.2)
    assert job["status"] == "cancelled", job
    status, _ = berth.json("GET", f"/v1.41/images/{ref}/json")
    assert status == 404


def test_docker_push_then_pull_back_gives_the_same_image(docker, registry, busybox_image):
    docker("pull", busybox_image.references[0])
    target = f"{registry.host}/pushed/busybox:cli"
    docker("tag", busybox_image.references[0], target)
    out = docker("push", target).stdout
    assert f"The push refers to repository [{registry.host}/pushed/busybox]" in out
    assert "cli: digest: sha256:" in out
    pushed_digest = out.split("digest: ")[1].split()[0]
    inspect = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{target}"],
                             capture_output=True, text=True, timeout=60)
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout)["Digest"] == pushed_digest
    image_id = docker("image", "inspect", "--format", "{{.Id}}", target).stdout.strip()
    docker("rmi", target)
    docker("pull", target)
    assert docker("image", "inspect", "--format", "{{.Id}}", target).stdout.strip() == image_id


def test_docker_login_then_push_and_pull_with_basic_auth(docker, auth_registry, busybox_image):
    host = auth_registry.host
    docker("pull", busybox_image.references[0])
    target = f"{host}/private/busybox:v1"
    docker("tag", busybox_image.references[0], target)
    refused = docker("push", target, check=False)
    assert refused.returncode != 0, "a push without credentials must be refused"
    login = docker("login", "-u", "berth", "-p", "s3cret-test", host)
    assert "Login Succeeded" in login.stdout
    assert "digest: sha256:" in docker("push", target).stdout
    docker("rmi", target)
    assert "Downloaded newer image" in docker("pull", target).stdout
    docker("image", "inspect", target)


def test_a_wrong_registry_password_is_refused(docker, auth_registry):
    result = docker("login", "-u", "berth", "-p", "not-it", auth_registry.host, check=False)
    assert result.returncode != 0
    assert "401" in result.stderr or "unauthorized" in result.stderr.lower() or "failed" in result.stderr
