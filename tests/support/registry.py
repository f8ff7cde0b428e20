"""Test support for registries: a real `docker-registry` on loopback, and images built offline.

- `start_registry(workdir, htpasswd=None)` runs Debian's docker-registry (CNCF distribution v2) on a
  free 127.0.0.1 port with filesystem storage under `workdir`; `RegistryServer.stop()` ends it.
- `build_busybox_image(out_dir, tag)` builds a tiny runnable image from the host's /bin/busybox
  (busybox-static) as an OCI image layout directory (Docker schema 2 manifest inside), which
  `push_image` (through runtime.registry.RegistryClient) pushes; `write_skopeo_dir` writes the same
  image for `skopeo_push` (skopeo's `oci:` source only takes OCI manifests).
- `build_image(out_dir, tag, layers)` is the general form, for multi-layer and per-arch images.

Everything is deterministic (fixed mtimes, gzip without timestamp), so the same layer built twice has
the same digest and can be mounted across repositories.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from functools import lru_cache

from runtime import manifest as m
from runtime.manifest import Descriptor, Platform
from runtime.registry import RegistryClient

DOCKER_REGISTRY = "/usr/bin/docker-registry"
BUSYBOX = "/bin/busybox"
SKOPEO = "skopeo"
BUSYBOX_APPLETS = ("sh", "ls", "cat", "echo", "env", "sleep", "id", "httpd", "wget", "stty", "true", "false")
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Fixed time for every tar entry and the config, so builds are reproducible.
EPOCH = 1700000000
CREATED = "2023-11-14T22:13:20Z"

#
# The registry process
#


@dataclass
class RegistryServer:
    """A running docker-registry: `host` is "127.0.0.1:<port>"."""

    host: str
    root: str
    process: subprocess.Popen
    log_path: str
    credentials: tuple[str, str] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def client(self, credentials: tuple[str, str] | None = None, **kwargs) -> RegistryClient:
        """Return a RegistryClient for this registry (with its own credentials unless told)."""
        return RegistryClient(self.host, credentials=credentials or self.credentials, **kwargs)

    def push(self, image: "BuiltImage", repository: str, tag: str | None = None) -> str:
        """Push an image with the Berth client; return its manifest digest."""
        return push_image(self.client(), repository, image, tag)

    def push_index(self, index: "BuiltIndex", repository: str, tag: str) -> str:
        """Push a multi-platform index and its images; return the index digest."""
        return push_index(self.client(), repository, index, tag)

    def log(self) -> str:
        """Return the registry's log so far (for failure messages)."""
        with open(self.log_path, errors="replace") as f:
            return f.read()[-5000:]

    def stop(self) -> None:
        """Stop the registry and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 right now (another process may take it; rare)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_htpasswd(username: str, password: str) -> str:
    """Return one htpasswd line with a bcrypt hash (what docker-registry accepts), using the
    system's crypt(3) (libxcrypt does bcrypt), so neither apache2-utils nor bcrypt is needed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    # Cost 4 (the minimum): these are test passwords, and every request checks the hash.
    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
    if not hashed or not hashed.startswith("$2"):
        raise RuntimeError("this system's crypt(3) cannot make bcrypt hashes")
    return f"{username}:{hashed}\n"


def start_registry(workdir: str, credentials: tuple[str, str] | None = None,
                   token_authority: "TokenAuthority | None" = None, timeout: float = 15.0) -> RegistryServer:
    """Start docker-registry on a free loopback port, storing under `workdir`; wait until /v2/ answers.

    With `credentials`, the registry requires them by htpasswd Basic auth. With `token_authority`, it
    wants Bearer tokens from that realm instead (the credentials are then the authority's).
    """
    os.makedirs(workdir, exist_ok=True)
    port = free_port()
    storage = os.path.join(workdir, "storage")
    os.makedirs(storage, exist_ok=True)
    auth = ""
    if credentials and token_authority is None:
        htpasswd = os.path.join(workdir, "htpasswd")
        with open(htpasswd, "w") as f:
            f.write(make_htpasswd(*credentials))
        auth = f"auth:\n  htpasswd:\n    realm: berth-test\n    path: {htpasswd}\n"
    if token_authority is not None:
        credentials = token_authority.credentials
        auth = (f"auth:\n  token:\n    realm: {token_authority.realm}\n    service: {token_authority.service}\n"
                f"    issuer: {token_authority.issuer}\n    rootcertbundle: {token_authority.cert_path}\n")
    config = (
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        "  cache:\n    blobdescriptor: inmemory\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: berth-test-secret\n"
        + auth
    )
    config_path = os.path.join(workdir, "config.yml")
    with open(config_path, "w") as f:
        f.write(config)
    log_path = os.path.join(workdir, "registry.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen([DOCKER_REGISTRY, "serve", config_path], stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    server = RegistryServer(host=f"127.0.0.1:{port}", root=storage, process=process, log_path=log_path,
                            credentials=credentials)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited with {process.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(f"{server.url}/v2/", timeout=1):
                return server
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"docker-registry did not answer on {server.host}:\n{server.log()}")
        time.sleep(0.05)


#
# Building images
#


@dataclass(frozen=True)
class File:
    """A regular file in a layer."""

    data: bytes
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Dir:
    """A directory in a layer."""

    mode: int = 0o755


@dataclass(frozen=True)
class Symlink:
    """A symbolic link in a layer."""

    target: str


@dataclass
class BuiltImage:
    """An image written to an OCI layout: its manifest, config and layer blobs, and where it lives."""

    layout_dir: str
    tag: str
    manifest: bytes
    manifest_digest: str
    manifest_media_type: str
    config: bytes
    config_descriptor: Descriptor
    layers: list[tuple[Descriptor, bytes]]
    diff_ids: list[str]
    # Filled by the fixtures: the references it was pushed as.
    references: list[str] = field(default_factory=list)

    @property
    def manifest_descriptor(self) -> Descriptor:
        return Descriptor(self.manifest_media_type, self.manifest_digest, len(self.manifest))

    def blobs(self) -> dict[str, bytes]:
        """Return every blob (config and layers) by digest."""
        out = {self.config_descriptor.digest: self.config}
        out.update({desc.digest: data for desc, data in self.layers})
        return out


@dataclass
class BuiltIndex:
    """A multi-platform index written to an OCI layout, with the images it lists."""

    layout_dir: str
    tag: str
    index: bytes
    index_digest: str
    media_type: str
    images: list[BuiltImage]
    references: list[str] = field(default_factory=list)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def host_architecture() -> str:
    """Return this machine's architecture in OCI terms (amd64, arm64...)."""
    return m.host_platform()[1]


def make_layer_tar(entries: dict[str, File | Dir | Symlink | bytes]) -> bytes:
    """Return an uncompressed tar of `entries` (path -> content), in path order, with fixed mtimes.

    Whiteouts are plain entries named `.wh.<name>` (or `.wh..wh..opq`) with empty content.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(entries):
            entry = entries[path]
            if isinstance(entry, bytes):
                entry = File(entry)
            info = tarfile.TarInfo(path.strip("/"))
            info.mtime = EPOCH
            info.uname = info.gname = ""
            if isinstance(entry, Dir):
                info.type = tarfile.DIRTYPE
                info.mode = entry.mode
                tar.addfile(info)
            elif isinstance(entry, Symlink):
                info.type = tarfile.SYMTYPE
                info.linkname = entry.target
                info.mode = 0o777
                tar.addfile(info)
            else:
                info.size = len(entry.data)
                info.mode = entry.mode
                info.uid, info.gid = entry.uid, entry.gid
                tar.addfile(info, io.BytesIO(entry.data))
    return buffer.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    """Gzip without a timestamp or file name, so equal input gives equal output."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6, mtime=0, filename="") as f:
        f.write(data)
    return buffer.getvalue()


def busybox_rootfs(extra_files: dict | None = None) -> dict:
    """Return the entries of a minimal busybox root filesystem."""
    with open(BUSYBOX, "rb") as f:
        busybox = f.read()
    entries: dict = {
        "bin": Dir(),
        "bin/busybox": File(busybox, 0o755),
        "etc": Dir(),
        "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        "etc/group": b"root:x:0:\nnogroup:x:65534:\nnobody:x:65534:\n",
        "root": Dir(0o700),
        "tmp": Dir(0o1777),
    }
    for applet in BUSYBOX_APPLETS:
        entries[f"bin/{applet}"] = Symlink("busybox")
    entries.update(extra_files or {})
    return entries


@lru_cache(maxsize=8)
def _busybox_layer(extra_key: tuple) -> tuple[bytes, bytes]:
    """(tar, gzipped tar) of the busybox rootfs; cached since gzip of 2 MB takes a moment."""
    tar = make_layer_tar(busybox_rootfs(dict(extra_key)))
    return tar, gzip_bytes(tar)


def busybox_layer(extra_files: dict | None = None) -> tuple[bytes, bytes]:
    """Return (tar, gzipped tar) of the busybox root filesystem, built once per `extra_files`."""
    return _busybox_layer(tuple(sorted((extra_files or {}).items(), key=lambda kv: kv[0])))


def build_image(out_dir: str, tag: str, layers: list[dict | tuple[bytes, bytes]], *,
                architecture: str | None = None, variant: str | None = None, oci: bool = False,
                cmd: list[str] | None = None, history: list[str] | None = None,
                write_index: bool = True) -> BuiltImage:
    """Build an image from layer entry maps (or prebuilt (tar, gzip) pairs) into the OCI layout `out_dir`.

    The manifest is Docker schema 2 with gzip Docker layers, or with `oci=True` an OCI manifest with
    OCI types. The layout's index.json gets an entry named `tag` unless `write_index` is False.
    """
    layer_records: list[tuple[Descriptor, bytes]] = []
    diff_ids = []
    layer_type = m.MEDIA_TYPE_OCI_LAYER_GZIP if oci else m.MEDIA_TYPE_DOCKER_LAYER_GZIP
    for layer in layers:
        tar, compressed = layer if isinstance(layer, tuple) else (None, None)
        if tar is None:
            tar = make_layer_tar(layer)
            compressed = gzip_bytes(tar)
        diff_ids.append(sha256(tar))
        layer_records.append((Descriptor(layer_type, sha256(compressed), len(compressed)), compressed))
    architecture = architecture or host_architecture()
    history = history or [f"layer {i}" for i in range(len(layers))]
    config_doc = {
        "architecture": architecture,
        "os": "linux",
        "created": CREATED,
        "config": {"Env": [DEFAULT_PATH], "Cmd": cmd or ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": CREATED, "created_by": text} for text in history],
    }
    if variant:
        config_doc["variant"] = variant
    config = json.dumps(config_doc, sort_keys=True).encode()
    config_type = m.MEDIA_TYPE_OCI_CONFIG if oci else m.MEDIA_TYPE_DOCKER_CONFIG
    config_descriptor = Descriptor(config_type, sha256(config), len(config))
    manifest_type = m.MEDIA_TYPE_OCI_MANIFEST if oci else m.MEDIA_TYPE_DOCKER_MANIFEST
    manifest = m.Manifest(config=config_descriptor, layers=tuple(d for d, _ in layer_records),
                          media_type=manifest_type).to_json()
    image = BuiltImage(layout_dir=out_dir, tag=tag, manifest=manifest, manifest_digest=sha256(manifest),
                       manifest_media_type=manifest_type, config=config, config_descriptor=config_descriptor,
                       layers=layer_records, diff_ids=diff_ids)
    for blob in [config, manifest] + [data for _, data in layer_records]:
        _write_blob(out_dir, blob)
    if write_index:
        _add_to_layout_index(out_dir, image.manifest_descriptor, tag)
    return image


def build_busybox_image(out_dir: str, tag: str, extra_files: dict | None = None) -> BuiltImage:
    """Build the busybox test image (one layer, Cmd ["sh"]) into the OCI layout `out_dir`.

    `extra_files` maps paths to bytes (or File/Dir/Symlink) added to the layer.
    """
    return build_image(out_dir, tag, [busybox_layer(extra_files)],
                       history=["COPY busybox-static /bin/busybox # berth test image"])


def build_index(out_dir: str, tag: str, images: list[BuiltImage], *, oci: bool = True) -> BuiltIndex:
    """Write an index (OCI, or a Docker manifest list) over per-platform images into the layout."""
    entries = []
    for image in images:
        config = json.loads(image.config)
        platform = Platform(os=config["os"], architecture=config["architecture"], variant=config.get("variant"))
        entries.append(Descriptor(image.manifest_media_type, image.manifest_digest, len(image.manifest),
                                  platform=platform))
    media_type = m.MEDIA_TYPE_OCI_INDEX if oci else m.MEDIA_TYPE_DOCKER_MANIFEST_LIST
    data = m.Index(manifests=tuple(entries), media_type=media_type).to_json()
    _write_blob(out_dir, data)
    _add_to_layout_index(out_dir, Descriptor(media_type, sha256(data), len(data)), tag)
    return BuiltIndex(layout_dir=out_dir, tag=tag, index=data, index_digest=sha256(data), media_type=media_type,
                      images=images)


def _write_blob(layout_dir: str, data: bytes) -> None:
    path = os.path.join(layout_dir, "blobs", "sha256", hashlib.sha256(data).hexdigest())
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.write(data)


def _add_to_layout_index(layout_dir: str, descriptor: Descriptor, tag: str) -> None:
    """Add (or replace) the entry named `tag` in the layout's index.json."""
    os.makedirs(layout_dir, exist_ok=True)
    with open(os.path.join(layout_dir, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    index_path = os.path.join(layout_dir, "index.json")
    doc = {"schemaVersion": 2, "mediaType": m.MEDIA_TYPE_OCI_INDEX, "manifests": []}
    if os.path.exists(index_path):
        with open(index_path) as f:
            doc = json.load(f)
    ref_key = "org.opencontainers.image.ref.name"
    doc["manifests"] = [e for e in doc["manifests"] if e.get("annotations", {}).get(ref_key) != tag]
    entry = descriptor.to_dict()
    entry["annotations"] = {ref_key: tag}
    doc["manifests"].append(entry)
    with open(index_path, "w") as f:
        json.dump(doc, f, indent=2)


#
# Pushing
#


def push_image(client: RegistryClient, repository: str, image: BuiltImage, tag: str | None = None) -> str:
    """Push an image with the Berth client (blobs it lacks, then the manifest); return the manifest digest.

    With `tag` None the manifest is pushed by digest only (as the entries of an index are).
    """
    for digest, data in image.blobs().items():
        if not client.blob_exists(repository, digest):
            client.upload_blob(repository, digest, len(data), io.BytesIO(data))
    return client.put_manifest(repository, tag or image.manifest_digest, image.manifest, image.manifest_media_type)


def push_index(client: RegistryClient, repository: str, index: BuiltIndex, tag: str) -> str:
    """Push every image of an index by digest, then the index under `tag`; return the index digest."""
    for image in index.images:
        push_image(client, repository, image)
    return client.put_manifest(repository, tag, index.index, index.media_type)


def write_skopeo_dir(image: BuiltImage, out_dir: str) -> str:
    """Write the image in skopeo's `dir:` format (manifest.json plus blobs by hex); return out_dir.

    skopeo 1.9 cannot push a Docker schema 2 manifest from an OCI layout (its `oci:` source only
    looks at index.json entries typed as OCI manifests or indexes); `dir:` keeps any manifest as is.
    """
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "version"), "w") as f:
        f.write("Directory Transport Version: 1.1\n")
    with open(os.path.join(out_dir, "manifest.json"), "wb") as f:
        f.write(image.manifest)
    for digest, data in image.blobs().items():
        with open(os.path.join(out_dir, digest.split(":", 1)[1]), "wb") as f:
            f.write(data)
    return out_dir


def skopeo_push(source: str, destination: str, credentials: tuple[str, str] | None = None) -> None:
    """Copy `source` (a skopeo transport: "dir:PATH", "oci:PATH:TAG") to `docker://<destination>`."""
    if shutil.which(SKOPEO) is None:
        raise RuntimeError("skopeo is not installed")
    command = [SKOPEO, "copy", "--quiet", "--dest-tls-verify=false", "--preserve-digests"]
    if credentials:
        command.append(f"--dest-creds={credentials[0]}:{credentials[1]}")
    command += [source, f"docker://{destination}"]
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60,
                                env={**os.environ, "TMPDIR": tmp})
    if result.returncode != 0:
        raise RuntimeError(f"skopeo copy {source} failed: {result.stderr.strip()}")


#
# A token server for docker-registry's "token" auth (it has none of its own)
#


class TokenAuthority:
    """A Docker token-auth realm: signs ES256 JWTs that docker-registry checks against its certificate.

    Grants every requested repository action to `credentials`, and pull only to anonymous clients.
    Needs the `cryptography` package (present in the venv through pyOpenSSL; tests importorskip it).
    """

    service = "berth-test-registry"
    issuer = "berth-test-token-issuer"

    def __init__(self, workdir: str, credentials: tuple[str, str]):
        import datetime
        import http.server
        import threading

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.credentials = credentials
        self.requests: list[dict] = []
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.issuer)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self._key, hashes.SHA256()))
        self._cert_der = cert.public_bytes(serialization.Encoding.DER)
        os.makedirs(workdir, exist_ok=True)
        self.cert_path = os.path.join(workdir, "token-cert.pem")
        with open(self.cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))

        authority = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                authority._handle(self)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handle(self, request) -> None:
        import base64
        import urllib.parse

        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
        auth = request.headers.get("Authorization") or ""
        self.requests.append({"query": query, "authorization": auth})
        user = None
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            if (user, password) != tuple(self.credentials):
                self._answer(request, 401, {"details": "incorrect username or password"})
                return
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = actions.split(",") if user else [a for a in actions.split(",") if a == "pull"]
            if granted:
                access.append({"type": kind, "name": name, "actions": granted})
        self._answer(request, 200, {"token": self._sign(user or "", access), "expires_in": 300})

    def _sign(self, subject: str, access: list) -> str:
        import base64
        import time as _time
        import uuid

        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        now = int(_time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(self._cert_der).decode()]}
        claims = {"iss": self.issuer, "sub": subject, "aud": self.service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
        r, s = decode_dss_signature(self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return signing_input + "." + b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    @staticmethod
    def _answer(request, status: int, doc: dict) -> None:
        body = json.dumps(doc).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)
