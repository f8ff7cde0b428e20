"""Tests of runtime/registry.py against a real docker-registry on loopback.

Two small local HTTP servers stand in only where docker-registry cannot help: a connection that
breaks in the middle of a blob, and a redirect to blob storage on another host.
"""

import hashlib
import http.server
import io
import json
import os
import threading

import pytest

from runtime import manifest as m
from runtime.errors import DigestMismatch, InvalidArgument, NotFound, RegistryError, Unauthorized
from runtime.registry import RegistryClient, RegistryNotFound, api_host
from tests.support.registry import build_image, push_image, sha256


class MemoryWriter:
    """A BlobWriter keeping the bytes in memory."""

    def __init__(self, initial: bytes = b""):
        self.buffer = io.BytesIO()
        self.buffer.write(initial)
        self.offset = len(initial)

    def write(self, data):
        self.buffer.write(data)
        self.offset += len(data)

    def getvalue(self):
        return self.buffer.getvalue()


def _push_blob(client, repository, data):
    digest = sha256(data)
    client.upload_blob(repository, digest, len(data), io.BytesIO(data))
    return m.Descriptor(m.MEDIA_TYPE_OCI_LAYER, digest, len(data))


def _blob_data_path(registry, digest):
    hex_ = digest.split(":", 1)[1]
    return os.path.join(registry.root, "docker/registry/v2/blobs/sha256", hex_[:2], hex_, "data")


#
# Hosts and schemes
#


def test_it_uses_http_for_loopback_and_https_otherwise():
    assert RegistryClient("127.0.0.1:5000").base_url == "http://127.0.0.1:5000"
    assert RegistryClient("localhost:5000").base_url == "http://localhost:5000"
    assert RegistryClient("[::1]:5000").base_url == "http://[::1]:5000"
    assert RegistryClient("registry.example.com").base_url == "https://registry.example.com"
    assert RegistryClient("registry.example.com:5000", insecure=True).base_url == "http://registry.example.com:5000"


def test_it_talks_to_registry_1_for_docker_hub():
    assert api_host("docker.io") == "registry-1.docker.io"
    client = RegistryClient("docker.io")
    assert client.base_url == "https://registry-1.docker.io" and client.is_docker_hub


def test_it_refuses_bad_names(registry_client):
    with pytest.raises(InvalidArgument, match="invalid repository name"):
        registry_client.get_manifest("../etc", "latest")
    with pytest.raises(InvalidArgument, match="invalid tag"):
        registry_client.get_manifest("library/busybox", "bad/tag")
    with pytest.raises(InvalidArgument, match="reference"):
        registry_client.get_manifest("library/busybox", "sha256:1234")


def test_it_pings(registry_client):
    registry_client.ping()


def test_it_reports_an_unreachable_registry():
    with pytest.raises(RegistryError, match="failed"):
        RegistryClient("127.0.0.1:1", timeout=2).ping()


#
# Manifests
#


def test_it_gets_a_manifest_by_tag(registry_client, busybox_image):
    for tag in ("latest", "1.36"):
        data, media_type, digest = registry_client.get_manifest("library/busybox", tag)
        assert data == busybox_image.manifest
        assert media_type == m.MEDIA_TYPE_DOCKER_MANIFEST
        assert digest == busybox_image.manifest_digest
    parsed = m.parse_manifest(data, media_type)
    assert parsed.config.digest == busybox_image.config_descriptor.digest


def test_it_gets_a_manifest_by_digest(registry_client, busybox_image):
    data, _, digest = registry_client.get_manifest("library/busybox", busybox_image.manifest_digest)
    assert data == busybox_image.manifest and digest == busybox_image.manifest_digest


def test_it_says_manifest_unknown_on_404(registry_client, busybox_image):
    with pytest.raises(NotFound, match=r"manifest unknown.*library/busybox:nope") as info:
        registry_client.get_manifest("library/busybox", "nope")
    assert isinstance(info.value, RegistryNotFound) and info.value.status == 404
    with pytest.raises(NotFound, match="unknown"):
        registry_client.get_manifest("no/such-repo", "latest")


def test_it_selects_a_platform_from_an_index(registry_client, multiarch_image):
    data, media_type, digest = registry_client.get_manifest("test/multiarch", "latest")
    assert media_type == m.MEDIA_TYPE_OCI_INDEX and digest == multiarch_image.index_digest
    index = m.parse_manifest(data, media_type)
    for arch in ("amd64", "arm64"):
        entry = m.select_platform(index, arch=arch)
        data, media_type, digest = registry_client.get_manifest("test/multiarch", entry.digest)
        image = m.parse_manifest(data, media_type)
        assert media_type == m.MEDIA_TYPE_OCI_MANIFEST and digest == entry.digest
        writer = MemoryWriter()
        registry_client.fetch_blob("test/multiarch", image.config, writer)
        assert json.loads(writer.getvalue())["architecture"] == arch
    host_entry = m.select_platform(index)
    assert host_entry.platform.architecture == m.host_platform()[1]


def test_it_detects_a_manifest_that_does_not_match_its_digest(registry, registry_client):
    # Push a manifest, then corrupt it in the registry's storage (same size, other bytes).
    config = _push_blob(registry_client, "test/corrupt-manifest", b'{"architecture":"amd64","os":"linux"}')
    manifest = m.Manifest(config=m.Descriptor(m.MEDIA_TYPE_OCI_CONFIG, config.digest, config.size), layers=(),
                          media_type=m.MEDIA_TYPE_OCI_MANIFEST, annotations={"note": "aaaa"}).to_json()
    digest = registry_client.put_manifest("test/corrupt-manifest", "v1", manifest, m.MEDIA_TYPE_OCI_MANIFEST)
    path = _blob_data_path(registry, digest)
    with open(path, "r+b") as f:
        f.write(manifest.replace(b"aaaa", b"bbbb"))
    with pytest.raises(DigestMismatch, match="registry sent content with digest"):
        registry_client.get_manifest("test/corrupt-manifest", digest)


#
# Blobs: download
#


def test_it_fetches_a_blob_and_verifies_its_digest(registry_client, busybox_image):
    descriptor, data = busybox_image.layers[0]
    writer = MemoryWriter()
    seen = []
    registry_client.fetch_blob("library/busybox", descriptor, writer, progress=lambda done, total: seen.append((done, total)))
    assert writer.getvalue() == data
    assert hashlib.sha256(writer.getvalue()).hexdigest() == descriptor.digest.split(":")[1]
    assert seen[-1] == (descriptor.size, descriptor.size) and len(seen) > 1


def test_it_resumes_a_fetch_from_an_offset(registry_client, busybox_image):
    descriptor, data = busybox_image.layers[0]
    writer = MemoryWriter(data[:1000])
    registry_client.fetch_blob("library/busybox", descriptor, writer)
    assert writer.getvalue() == data


def test_it_does_nothing_for_a_complete_writer(registry_client, busybox_image):
    descriptor, data = busybox_image.layers[0]
    writer = MemoryWriter(data)
    registry_client.fetch_blob("library/busybox", descriptor, writer)
    assert writer.getvalue() == data


def test_it_detects_a_blob_that_does_not_match_its_digest(registry, registry_client):
    descriptor = _push_blob(registry_client, "test/corrupt-blob", os.urandom(5000))
    with open(_blob_data_path(registry, descriptor.digest), "r+b") as f:
        f.write(b"corrupted")
    with pytest.raises(DigestMismatch, match="downloaded content has digest"):
        registry_client.fetch_blob("test/corrupt-blob", descriptor, MemoryWriter())


def test_it_never_reads_beyond_the_declared_size(registry_client, busybox_image):
    descriptor, data = busybox_image.layers[0]
    short = m.Descriptor(descriptor.media_type, descriptor.digest, 1000)
    writer = MemoryWriter()
    with pytest.raises(DigestMismatch, match="more than the size 1000"):
        registry_client.fetch_blob("library/busybox", short, writer)
    assert writer.offset == 0


def test_it_says_blob_unknown_on_404(registry_client, busybox_image):
    missing = m.Descriptor(m.MEDIA_TYPE_OCI_LAYER, "sha256:" + "0" * 64, 10)
    with pytest.raises(NotFound, match="blob unknown"):
        registry_client.fetch_blob("library/busybox", missing, MemoryWriter())


#
# Blobs: upload, mount, and push then pull back
#


def test_it_checks_existence_and_mounts_across_repositories(registry_client, busybox_image):
    descriptor, _ = busybox_image.layers[0]
    assert registry_client.blob_exists("library/busybox", descriptor.digest)
    assert not registry_client.blob_exists("test/mounted", descriptor.digest)
    assert registry_client.mount_blob("test/mounted", descriptor.digest, "library/busybox") is True
    assert registry_client.blob_exists("test/mounted", descriptor.digest)
    # A blob the source does not have: no mount, and the caller uploads instead.
    assert registry_client.mount_blob("test/mounted", "sha256:" + "1" * 64, "library/busybox") is False


def test_it_uploads_in_one_put_and_in_chunks(registry_client):
    small = os.urandom(3000)
    big = os.urandom(2500)
    small_digest, big_digest = sha256(small), sha256(big)
    registry_client.upload_blob("test/upload", small_digest, len(small), io.BytesIO(small))
    registry_client.upload_blob("test/upload", big_digest, len(big), io.BytesIO(big), chunk_size=1000)
    for digest, data in ((small_digest, small), (big_digest, big)):
        writer = MemoryWriter()
        registry_client.fetch_blob("test/upload", m.Descriptor(m.MEDIA_TYPE_OCI_LAYER, digest, len(data)), writer)
        assert writer.getvalue() == data


def test_it_refuses_to_upload_content_with_another_digest(registry_client):
    data = os.urandom(100)
    wrong = "sha256:" + "2" * 64
    with pytest.raises(DigestMismatch):
        registry_client.upload_blob("test/upload", wrong, len(data), io.BytesIO(data))
    with pytest.raises(DigestMismatch, match="short"):
        registry_client.upload_blob("test/upload", sha256(data), len(data) + 5, io.BytesIO(data))
    assert not registry_client.blob_exists("test/upload", wrong)


def test_it_pushes_then_pulls_back_the_same_image(registry_client, multilayer_image, tmp_path):
    pushed = push_image(registry_client, "test/roundtrip", multilayer_image, "v1")
    assert pushed == multilayer_image.manifest_digest
    data, media_type, digest = registry_client.get_manifest("test/roundtrip", "v1")
    assert (data, digest) == (multilayer_image.manifest, multilayer_image.manifest_digest)
    parsed = m.parse_manifest(data, media_type)
    assert len(parsed.layers) == 3
    pulled = {}
    for descriptor in (parsed.config,) + parsed.layers:
        writer = MemoryWriter()
        registry_client.fetch_blob("test/roundtrip", descriptor, writer)
        pulled[descriptor.digest] = writer.getvalue()
    assert pulled == multilayer_image.blobs()
    assert registry_client.tags("test/roundtrip") == ["v1"]


def test_it_refuses_a_manifest_whose_blobs_are_missing(registry_client, tmp_path):
    image = build_image(str(tmp_path), "x", [{"x": b"x"}], write_index=False)
    with pytest.raises(RegistryError, match="blob unknown") as info:
        registry_client.put_manifest("test/incomplete", "v1", image.manifest, image.manifest_media_type)
    assert info.value.status == 400


#
# Listings
#


def test_it_lists_tags_catalog_and_searches(registry_client, busybox_image, multilayer_image, multiarch_image):
    assert sorted(registry_client.tags("library/busybox")) == ["1.36", "latest"]
    catalog = registry_client.catalog()
    assert {"library/busybox", "test/multilayer", "test/multiarch"} <= set(catalog)
    assert catalog == sorted(catalog)
    # Pagination: n=1 per page, followed through Link headers until n is reached.
    assert len(registry_client.catalog(n=2)) == 2
    results = registry_client.search("multi", limit=10)
    assert {r.name for r in results} >= {"test/multilayer", "test/multiarch"}
    assert all("multi" in r.name for r in results)
    assert len(registry_client.search("multi", limit=1)) == 1


def test_it_paginates_the_catalog(registry_client, busybox_image, multilayer_image):
    client_pages = []
    original = registry_client._pages

    def spy(path, scopes, what):
        for page in original(path, scopes, what):
            client_pages.append(page)
            yield page

    registry_client._pages = spy
    names = registry_client.catalog(n=1)
    assert len(names) == 1 and len(client_pages) == 1


#
# Basic auth (docker-registry with htpasswd)
#


def test_it_authenticates_with_basic_credentials(auth_registry, busybox_image):
    client = auth_registry.client()
    client.ping()
    push_image(client, "private/busybox", busybox_image, "latest")
    data, _, digest = client.get_manifest("private/busybox", "latest")
    assert digest == busybox_image.manifest_digest


def test_it_refuses_bad_or_missing_credentials(auth_registry):
    with pytest.raises(Unauthorized, match="refused the password of user 'berth'|refused user 'berth'"):
        RegistryClient(auth_registry.host, credentials=("berth", "wrong")).ping()
    with pytest.raises(Unauthorized, match="requires a username and password"):
        RegistryClient(auth_registry.host).get_manifest("private/busybox", "latest")


#
# Bearer tokens (docker-registry "token" auth, with a local token realm)
#


def test_it_pushes_and_pulls_with_bearer_tokens(token_registry, busybox_image):
    client = token_registry.client()
    client.ping()
    push_image(client, "private/busybox", busybox_image, "latest")
    data, _, digest = client.get_manifest("private/busybox", "latest")
    assert digest == busybox_image.manifest_digest
    scopes = [r["query"].get("scope") for r in token_registry.authority.requests]
    assert ["repository:private/busybox:pull,push"] in scopes
    assert all(r["query"]["service"] == ["berth-test-registry"] for r in token_registry.authority.requests)
    # Anonymous: the realm grants pull only, so reading works and pushing is refused.
    anonymous = RegistryClient(token_registry.host)
    assert anonymous.get_manifest("private/busybox", "latest")[2] == digest
    with pytest.raises(Unauthorized, match="refused anonymous access"):
        anonymous.put_manifest("private/busybox", "other", data, busybox_image.manifest_media_type)


def test_it_refuses_bad_credentials_at_the_token_realm(token_registry):
    with pytest.raises(Unauthorized, match="token server .* refused user 'berth'"):
        RegistryClient(token_registry.host, credentials=("berth", "wrong")).get_manifest("private/busybox", "latest")


#
# What docker-registry cannot do: a connection broken mid-blob, a redirect to storage elsewhere
#


class _BlobServer(http.server.ThreadingHTTPServer):
    daemon_threads = True


def _serve(handler_class):
    server = _BlobServer(("127.0.0.1", 0), handler_class)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return server


BLOB = os.urandom(300_000)
BLOB_DESCRIPTOR = m.Descriptor(m.MEDIA_TYPE_OCI_LAYER, sha256(BLOB), len(BLOB))


class FlakyHandler(http.server.BaseHTTPRequestHandler):
    """Serves BLOB, but the first two GETs break after 100 000 bytes; records the Range headers."""

    requests: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        FlakyHandler.requests.append(self.headers.get("Range"))
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(BLOB) - start))
        self.end_headers()
        if len(FlakyHandler.requests) <= 2:
            self.wfile.write(BLOB[start:start + 100_000])
            self.wfile.flush()
            self.connection.shutdown(2)  # Break the connection mid-body.
            return
        self.wfile.write(BLOB[start:])


def test_it_resumes_after_a_broken_connection():
    FlakyHandler.requests = []
    server = _serve(FlakyHandler)
    try:
        client = RegistryClient(f"127.0.0.1:{server.server_address[1]}")
        writer = MemoryWriter()
        client.fetch_blob("test/flaky", BLOB_DESCRIPTOR, writer)
        assert writer.getvalue() == BLOB
        assert FlakyHandler.requests == [None, "bytes=100000-", "bytes=200000-"]
    finally:
        server.shutdown()


class StorageHandler(http.server.BaseHTTPRequestHandler):
    """Blob storage on another host: records the Authorization it gets."""

    authorizations: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        StorageHandler.authorizations.append(self.headers.get("Authorization"))
        self.send_response(200)
        self.send_header("Content-Length", str(len(BLOB)))
        self.end_headers()
        self.wfile.write(BLOB)


def _redirecting_registry(storage_url):
    class RedirectingHandler(http.server.BaseHTTPRequestHandler):
        """A registry asking for Basic auth, then redirecting blobs to storage_url."""

        authorizations: list = []

        def log_message(self, *args):
            pass

        def do_GET(self):
            auth = self.headers.get("Authorization")
            RedirectingHandler.authorizations.append(auth)
            if not auth:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="test"')
                self.send_header("Content-Length", "0")
            else:
                self.send_response(307)
                self.send_header("Location", storage_url + "/blob?signature=abc")
                self.send_header("Content-Length", "0")
            self.end_headers()

    return RedirectingHandler


def test_it_follows_redirects_without_sending_the_registry_credentials():
    StorageHandler.authorizations = []
    storage = _serve(StorageHandler)
    # "localhost" versus "127.0.0.1": another origin, as S3 would be.
    handler = _redirecting_registry(f"http://localhost:{storage.server_address[1]}")
    registry = _serve(handler)
    try:
        client = RegistryClient(f"127.0.0.1:{registry.server_address[1]}", credentials=("u", "p"))
        writer = MemoryWriter()
        client.fetch_blob("test/redirect", BLOB_DESCRIPTOR, writer)
        assert writer.getvalue() == BLOB
        assert handler.authorizations[0] is None and handler.authorizations[-1].startswith("Basic ")
        assert StorageHandler.authorizations == [None]
    finally:
        storage.shutdown()
        registry.shutdown()
