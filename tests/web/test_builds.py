"""docker build against Berth (the classic builder API) and the build page in Chromium."""

import uuid

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.live


@pytest.fixture
def docker(docker):
    """The docker CLI with the classic builder (Berth serves the classic build API)."""
    docker.env["DOCKER_BUILDKIT"] = "0"
    return docker


def test_docker_build_then_cached_rebuild_then_run(docker, tmp_path):
    tag = f"built/app-{uuid.uuid4().hex[:6]}:v1"
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(
        "FROM busybox AS base\n"
        "ARG GREETING=hello\n"
        "RUN echo \"$GREETING from the build\" > /greeting\n"
        "FROM busybox\n"
        "COPY --from=base /greeting /greeting\n"
        "COPY app.txt /app/app.txt\n"
        "ENV MODE=prod\n"
        "WORKDIR /app\n"
        "CMD [\"sh\", \"-c\", \"cat /greeting app.txt; echo $MODE; pwd\"]\n")
    (context / "app.txt").write_text("app v1\n")
    (context / "secret.log").write_text("do not send\n")
    (context / ".dockerignore").write_text("*.log\n")
    out = docker("build", "-t", tag, "--build-arg", "GREETING=hi", str(context)).stdout
    assert "Step 1/9 : FROM busybox AS base" in out and "Successfully built" in out
    assert f"Successfully tagged {tag}" in out
    again = docker("build", "-t", tag, "--build-arg", "GREETING=hi", str(context)).stdout
    assert again.count("Using cache") >= 6
    (context / "app.txt").write_text("app v2\n")
    third = docker("build", "-t", tag, "--build-arg", "GREETING=hi", str(context)).stdout
    step_of_copy = third.split("COPY app.txt /app/app.txt", 1)[1]
    assert "Using cache" in third.split("COPY app.txt /app/app.txt", 1)[0]
    assert "Using cache" not in step_of_copy.split("Step", 1)[0]
    name = "built-" + uuid.uuid4().hex[:6]
    docker("run", "-d", "--name", name, tag)
    assert docker("wait", name).stdout.strip() == "0"
    logs = docker("logs", name).stdout
    assert "hi from the build" in logs and "app v2" in logs and "prod" in logs and "/app" in logs
    history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", tag).stdout
    assert "ENV MODE=prod" in history
    docker("rm", name)


def test_build_network_none_runs_without_interfaces(docker, tmp_path):
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM busybox\nRUN echo interfaces: $(ls /sys/class/net)\n")
    out = docker("build", "--network", "none", str(context)).stdout
    assert "interfaces: lo\n" in out


def test_a_failing_run_fails_the_build_with_its_code(docker, tmp_path):
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM busybox\nRUN echo about to fail; exit 7\n")
    result = docker("build", str(context), check=False)
    assert result.returncode != 0
    assert "about to fail" in result.stdout
    assert "returned a non-zero code: 7" in result.stdout + result.stderr


def test_copy_outside_the_context_is_refused(docker, tmp_path):
    context = tmp_path / "ctx"
    context.mkdir()
    (tmp_path / "secret").write_text("outside\n")
    (context / "Dockerfile").write_text("FROM busybox\nCOPY ../secret /secret\n")
    result = docker("build", str(context), check=False)
    assert result.returncode != 0
    assert "outside the build context" in result.stdout + result.stderr or "secret" in result.stderr


def test_builder_prune(docker):
    out = docker("builder", "prune", "-f").stdout
    assert "Total reclaimed space" in out


@pytest.mark.browser
def test_build_from_the_page(logged_in_page, tmp_path):
    page = logged_in_page
    tag = f"page/built-{uuid.uuid4().hex[:6]}:v1"
    page.goto("/images/build/")
    page.fill("#build-form textarea[name=dockerfile_text]", "FROM busybox\nRUN echo built-in-the-browser > /x\n")
    page.fill("#build-form input[name=tags]", tag)
    page.click("#build-form button[type=submit]")
    expect(page.locator("#job-status")).to_have_text("Succeeded", timeout=60000)
    expect(page.locator("#job-log")).to_contain_text("Successfully built")
    page.click("#job-result")
    expect(page.locator("#tags")).to_contain_text(tag)
    # And a folder packed by the page.
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "Dockerfile").write_text("FROM busybox\nCOPY index.html /www/index.html\n")
    (folder / "index.html").write_text("<h1>hi</h1>\n")
    page.goto("/images/build/")
    page.set_input_files("#context-folder", str(folder))
    page.fill("#build-form input[name=tags]", tag.replace(":v1", ":folder"))
    page.click("#build-form button[type=submit]")
    expect(page.locator("#job-status")).to_have_text("Succeeded", timeout=60000)
    expect(page.locator("#job-log")).to_contain_text("COPY index.html /www/index.html")
