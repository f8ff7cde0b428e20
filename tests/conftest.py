"""Fixtures shared by the whole suite: the live stack, a real browser, a real registry with test images."""

import os
import shutil
from pathlib import Path

import pytest

from tests import live
from tests.support.registry import (
    BuiltImage,
    BuiltIndex,
    Dir,
    File,
    RegistryServer,
    build_busybox_image,
    build_image,
    build_index,
    busybox_layer,
    host_architecture,
    skopeo_push,
    start_registry,
    write_skopeo_dir,
)


@pytest.fixture(scope="session")
def test_dir() -> Path:
    return Path(os.environ["BERTH_TEST_DIR"])


@pytest.fixture(scope="session")
def redis_server(test_dir):
    """A private redis-server at REDIS_URL for the whole session."""
    logdir = test_dir / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    proc = live.start_redis(logdir)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def berth(redis_server, test_dir):
    """Berth running for real: Daphne and a Celery worker on the private Redis, data under test_dir."""
    server = live.start_live_server(test_dir / "logs")
    yield server
    for proc in reversed(server.processes):
        proc.stop()


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, berth):
    """A fresh browser page (own cookies) on the live server."""
    context = browser.new_context(base_url=berth.url)
    page = context.new_page()
    page.set_default_timeout(15000)
    yield page
    context.close()


@pytest.fixture
def logged_in_page(page, berth):
    """A page logged in as the admin, on the dashboard."""
    page.goto("/accounts/login/")
    page.fill("input[name=username]", berth.username)
    page.fill("input[name=password]", berth.password)
    page.click("button[type=submit]")
    page.wait_for_url(berth.url + "/")
    return page


#
# A real docker-registry on loopback, and test images built offline from busybox-static
#

AUTH_CREDENTIALS = ("berth", "s3cret-test")


@pytest.fixture(scope="session")
def registry(tmp_path_factory) -> RegistryServer:
    """A running docker-registry without auth: `.host` is "127.0.0.1:<port>", `.push(...)` pushes."""
    server = start_registry(str(tmp_path_factory.mktemp("registry")))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory) -> RegistryServer:
    """A running docker-registry that requires Basic auth with AUTH_CREDENTIALS (`.credentials`)."""
    server = start_registry(str(tmp_path_factory.mktemp("auth-registry")), credentials=AUTH_CREDENTIALS)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory):
    """A running docker-registry that wants Bearer tokens from a local TokenAuthority (`.authority`).

    The authority grants AUTH_CREDENTIALS every action asked for, and anonymous clients pull only.
    """
    pytest.importorskip("cryptography", reason="the token realm signs JWTs with cryptography")
    from tests.support.registry import TokenAuthority

    workdir = str(tmp_path_factory.mktemp("token-registry"))
    authority = TokenAuthority(workdir, AUTH_CREDENTIALS)
    server = start_registry(workdir, token_authority=authority)
    server.authority = authority
    yield server
    server.stop()
    authority.stop()


@pytest.fixture(scope="session")
def busybox_image(registry, tmp_path_factory) -> BuiltImage:
    """The busybox image, pushed as <registry>/library/busybox:latest (by skopeo) and :1.36 (by Berth)."""
    work = tmp_path_factory.mktemp("busybox")
    image = build_busybox_image(str(work / "layout"), "latest")
    skopeo_push("dir:" + write_skopeo_dir(image, str(work / "dir")), f"{registry.host}/library/busybox:latest")
    registry.push(image, "library/busybox", "1.36")
    image.references = [f"{registry.host}/library/busybox:latest", f"{registry.host}/library/busybox:1.36"]
    return image


@pytest.fixture(scope="session")
def multilayer_image(registry, tmp_path_factory) -> BuiltImage:
    """Three layers pushed as <registry>/test/multilayer:latest.

    1. busybox; 2. adds /data/a.txt, /data/b.txt, /etc/motd and /opq/x.txt;
    3. deletes /data/a.txt (whiteout), empties /opq (opaque whiteout) then adds /opq/y.txt and /data/c.txt.
    """
    work = tmp_path_factory.mktemp("multilayer")
    layers = [
        busybox_layer(),
        {"data": Dir(), "data/a.txt": b"a\n", "data/b.txt": b"b\n", "etc/motd": b"hello from layer 2\n",
         "opq": Dir(), "opq/x.txt": b"x\n"},
        {"data": Dir(), "data/.wh.a.txt": b"", "data/c.txt": File(b"c\n", 0o600),
         "opq": Dir(), "opq/.wh..wh..opq": b"", "opq/y.txt": b"y\n"},
    ]
    image = build_image(str(work / "layout"), "latest", layers,
                        history=["busybox", "add /data and /opq", "rm /data/a.txt, replace /opq"])
    registry.push(image, "test/multilayer", "latest")
    image.references = [f"{registry.host}/test/multilayer:latest"]
    return image


@pytest.fixture(scope="session")
def multiarch_image(registry, tmp_path_factory) -> BuiltIndex:
    """An OCI index with linux/amd64 and linux/arm64/v8 images, pushed as <registry>/test/multiarch:latest.

    Each image has a marker layer with /etc/berth-arch holding its architecture; the host's one also
    has the busybox layer below, so it runs.
    """
    layout = str(tmp_path_factory.mktemp("multiarch") / "layout")
    images = []
    for arch, variant in (("amd64", None), ("arm64", "v8")):
        marker = {"etc": Dir(), "etc/berth-arch": f"{arch}\n".encode()}
        layers = [busybox_layer(), marker] if arch == host_architecture() else [marker]
        images.append(build_image(layout, f"latest-{arch}", layers, architecture=arch, variant=variant,
                                  oci=True, write_index=False))
    index = build_index(layout, "latest", images, oci=True)
    registry.push_index(index, "test/multiarch", "latest")
    index.references = [f"{registry.host}/test/multiarch:latest"]
    return index


@pytest.fixture
def registry_client(registry):
    """A fresh RegistryClient for the plain registry."""
    return registry.client()


def pytest_report_header(config):
    return f"docker-registry: {'found' if os.path.exists('/usr/bin/docker-registry') else 'MISSING'}"


@pytest.fixture(scope="session")
def big_image(registry, tmp_path_factory) -> BuiltImage:
    """An image with an 8 MB incompressible layer, pushed as <registry>/test/big:latest: slow through a proxy."""
    work = tmp_path_factory.mktemp("big")
    layers = [busybox_layer(), {"data": Dir(), "data/random.bin": os.urandom(8 << 20)}]
    image = build_image(str(work / "layout"), "latest", layers, history=["busybox", "add 8 MB of random bytes"])
    registry.push(image, "test/big", "latest")
    image.references = [f"{registry.host}/test/big:latest"]
    return image


@pytest.fixture
def slow_registry(registry):
    """The test registry behind a proxy that sends 1 MB/s: a pull of big_image takes seconds."""
    from tests.support.throttle import ThrottledProxy

    proxy = ThrottledProxy(registry.host, rate=1 << 20)
    yield proxy
    proxy.stop()


@pytest.fixture
def unique_image(registry, tmp_path):
    """Make a new image no other test has (busybox plus a layer of its own) and push it; return it.

    Tests that expect a cold pull or a real deletion use it, so the order of tests does not matter.
    """
    import uuid

    def make(name: str = "unique") -> BuiltImage:
        marker = uuid.uuid4().hex[:10]
        layers = [busybox_layer(), {"etc": Dir(), "etc/marker": f"{marker}\n".encode()}]
        image = build_image(str(tmp_path / f"layout-{marker}"), "latest", layers,
                            history=["busybox", f"add /etc/marker {marker}"])
        repository = f"test/{name}-{marker}"
        registry.push(image, repository, "latest")
        image.references = [f"{registry.host}/{repository}:latest"]
        return image

    return make


def pytest_sessionfinish(session, exitstatus):
    """A passing session removes its private dir (engine root, database, logs); a failing one keeps
    it for its logs, and so does one that left a mount inside it (a leak to look at), with a word."""
    path = os.environ.get("BERTH_TEST_DIR", "")
    if exitstatus != 0 or not os.path.basename(path).startswith("berth-test-") or os.environ.get("BERTH_KEEP_TEST_DIR"):
        return
    with open("/proc/self/mountinfo") as f:
        leaked = [line.split()[4] for line in f if line.split()[4].startswith(path + "/")]
    if leaked:
        session.config.get_terminal_writer().line(f"{len(leaked)} mounts left under {path} (kept): {leaked[:3]}",
                                                  yellow=True)
        return
    shutil.rmtree(path, ignore_errors=True)
