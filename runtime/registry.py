"""A client of the OCI distribution protocol (Docker registry API v2).

`RegistryClient` talks to one registry host: manifests, blobs (download with resume, upload, cross-
repository mount), tags, catalog, search. It does not store anything: blob bytes go to a writer the
caller provides (runtime/store.py's ingest writer), manifests come back as bytes plus their digest.

Auth follows the registry's 401 challenge (runtime/wwwauthenticate.py). Registry error documents
(`{"errors": [{"code", "message", "detail"}]}`) become RegistryError with the HTTP status; a 404
becomes RegistryNotFound, which is both a RegistryError and a NotFound.

Scheme: HTTPS, except for loopback registries (127.0.0.0/8, ::1, localhost) and ones the caller names
insecure, which use plain HTTP.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import time
import urllib.parse
from dataclasses import dataclass
from typing import BinaryIO, Callable, Protocol

from runtime import transport
from runtime.digest import Digest
from runtime.errors import Cancelled, DigestMismatch, InvalidArgument, NotFound, RegistryError, Unauthorized
from runtime.manifest import MANIFEST_MEDIA_TYPES, MAX_MANIFEST_SIZE, Descriptor, parse_digest
from runtime.wwwauthenticate import Authorizer, Credentials, TokenCache, repository_scope

DOCKER_HUB = "docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"
DOCKER_HUB_INDEX = "https://index.docker.io"
_DOCKER_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com")

# Blob downloads: read this much at a time, and resume this many times after a broken connection.
READ_CHUNK = 256 * 1024
FETCH_RETRIES = 3
RETRY_DELAY = 0.2
# Uploads: a blob up to this size goes in one PUT; bigger ones in PATCH chunks of this size.
UPLOAD_CHUNK = 16 * 1024 * 1024
# Listings (catalog, tags, search): bound the pages we read and how many we follow.
MAX_LISTING_BODY = 4 * 1024 * 1024
MAX_PAGES = 100
MAX_ERROR_BODY = 64 * 1024

_REPOSITORY_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_LINK_NEXT_RE = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')


class RegistryNotFound(RegistryError, NotFound):
    """The registry says the manifest, blob or repository does not exist (HTTP 404)."""


class BlobWriter(Protocol):
    """Where fetch_blob puts bytes: `offset` is how many bytes it already holds (resume point).

    A writer with a true `verifies_digest` attribute checks the blob's digest itself (a store ingest
    opened with the expected digest does, at commit): fetch_blob then does not hash the bytes again.
    """

    offset: int

    def write(self, data: bytes) -> object:
        """Append data; `offset` grows by len(data)."""


ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class SearchResult:
    """One search hit, with the fields the Docker API returns from `GET /images/search`."""

    name: str
    description: str = ""
    star_count: int = 0
    is_official: bool = False
    is_automated: bool = False


def api_host(registry: str) -> str:
    """Return the host to call for a registry name: Docker Hub's API lives at registry-1.docker.io."""
    return DOCKER_HUB_API_HOST if registry.lower() in _DOCKER_HUB_ALIASES else registry


class RegistryClient:
    """The distribution API of one registry. Thread-safe: each request opens its own connection.

    `credentials` is (username, password) or None; `insecure` allows plain HTTP to a non-loopback
    host; `timeout` bounds every connect and every read, in seconds.
    """

    def __init__(self, registry_host: str, *, credentials: Credentials | None = None, insecure: bool = False,
                 timeout: float = 30, token_cache: TokenCache | None = None):
        if not registry_host or "/" in registry_host:
            raise InvalidArgument(f"invalid registry host {registry_host!r}")
        self.registry = registry_host
        self.host = api_host(registry_host)
        self.is_docker_hub = self.host == DOCKER_HUB_API_HOST
        self.insecure = insecure
        self.timeout = timeout
        plain = insecure or transport.is_loopback_host(self.host)
        self.base_url = f"{'http' if plain else 'https'}://{self.host}"
        self.auth = Authorizer(self.host, credentials, timeout=timeout, allow_http=plain, cache=token_cache)

    def __repr__(self) -> str:
        return f"RegistryClient({self.base_url!r})"

    #
    # Requests
    #

    def _request(self, method: str, path_or_url: str, scopes: list[str], *, headers: dict | None = None,
                 body: bytes | None = None, follow_redirects: bool = True) -> transport.Response:
        """Send an authorised request: on 401 learn the challenge and retry once. Caller closes."""
        url = path_or_url if "://" in path_or_url else self.base_url + path_or_url
        same_host = transport.origin(url) == transport.origin(self.base_url)
        headers = dict(headers or {})
        sent = self.auth.authorization(scopes) if same_host else None
        for attempt in range(2):
            if sent:
                headers["Authorization"] = sent
            response = transport.request(method, url, headers=headers, body=body, timeout=self.timeout,
                                         allow_http=self.insecure, follow_redirects=follow_redirects)
            if response.status != 401 or not same_host:
                return response
            challenge = response.headers.get_all("WWW-Authenticate") or []
            detail = self._error_message(response)
            response.close()
            if attempt == 1:
                who = f"user {self.auth.credentials[0]!r}" if self.auth.credentials else "anonymous access"
                raise Unauthorized(f"registry {self.registry} refused {who}: {detail}", 401)
            sent = self.auth.handle_challenge(challenge, scopes, sent)
        raise AssertionError("unreachable")

    def _error_message(self, response: transport.Response) -> str:
        """Turn a registry error document into one readable line ("manifest unknown: ...")."""
        try:
            body = response.read_all(MAX_ERROR_BODY, what="error document")
        except RegistryError:
            return f"HTTP {response.status}"
        try:
            errors = json.loads(body).get("errors")
        except (ValueError, AttributeError):
            errors = None
        if not isinstance(errors, list) or not errors:
            text = body.decode("utf-8", "replace").strip()[:200]
            return f"HTTP {response.status} {response.reason}" + (f": {text}" if text else "")
        parts = []
        for error in errors[:5]:
            if not isinstance(error, dict):
                continue
            message = str(error.get("message") or error.get("code") or "error")[:200]
            detail = error.get("detail")
            if detail:
                detail_text = detail if isinstance(detail, str) else json.dumps(detail, sort_keys=True)
                message += f" ({detail_text[:200]})"
            parts.append(message)
        return "; ".join(parts) or f"HTTP {response.status}"

    def _raise_for(self, response: transport.Response, what: str) -> None:
        """Raise the error matching an unexpected response; `what` names the object asked for."""
        message = self._error_message(response)
        response.close()
        status = response.status
        if status == 404:
            raise RegistryNotFound(f"{message}: {what} on {self.registry}", 404)
        if status in (401, 403):
            raise Unauthorized(f"access to {what} on {self.registry} denied: {message}", status)
        if status == 429:
            raise RegistryError(f"registry {self.registry} rate-limited us ({what}): {message}", status)
        raise RegistryError(f"registry {self.registry} answered {status} for {what}: {message}", status)

    def _repo_path(self, repository: str) -> str:
        if self.is_docker_hub and "/" not in repository:
            repository = "library/" + repository
        if len(repository) > 255 or not _REPOSITORY_RE.fullmatch(repository):
            raise InvalidArgument(f"invalid repository name {repository!r}")
        return repository

    #
    # Registry
    #

    def ping(self) -> None:
        """Check that the host is a v2 registry and that our credentials (if any) are accepted.

        Raise RegistryError when it cannot be reached or is no registry, Unauthorized when it refuses.
        """
        with self._request("GET", "/v2/", []) as response:
            if response.status != 200:
                self._raise_for(response, "the /v2/ endpoint")

    #
    # Manifests
    #

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str, Digest]:
        """Return (bytes, media type, digest) of a manifest or index, by tag or digest.

        The digest is computed from the bytes; when `reference` is a digest (or the registry sent
        Docker-Content-Digest) it must match, else DigestMismatch. Bodies over 4 MiB are refused.
        """
        repo = self._repo_path(repository)
        expected = self._check_reference(reference)
        scopes = [repository_scope(repo)]
        headers = {"Accept": ", ".join(MANIFEST_MEDIA_TYPES)}
        what = f"manifest {repo}{'@' if expected else ':'}{reference}"
        with self._request("GET", f"/v2/{repo}/manifests/{reference}", scopes, headers=headers) as response:
            if response.status != 200:
                self._raise_for(response, what)
            data = response.read_all(MAX_MANIFEST_SIZE, what=what)
            media_type = (response.header("Content-Type") or "").split(";", 1)[0].strip()
            announced = response.header("Docker-Content-Digest")
        digest = Digest.from_hex(hashlib.sha256(data).hexdigest())
        if expected is not None and digest != expected:
            raise DigestMismatch(f"{what}: registry sent content with digest {digest}")
        if expected is None and announced and announced.startswith("sha256:") and announced != digest:
            raise DigestMismatch(f"{what}: registry announced {announced[:80]} but sent {digest}")
        if not media_type or media_type in ("application/json", "text/plain"):
            media_type = _media_type_from_body(data)
        return data, media_type, digest

    def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> Digest:
        """Push a manifest under a tag (or its own digest); return its digest."""
        repo = self._repo_path(repository)
        expected = self._check_reference(reference)
        if len(data) > MAX_MANIFEST_SIZE:
            raise InvalidArgument(f"manifest is {len(data)} bytes, over the limit of {MAX_MANIFEST_SIZE}")
        digest = Digest.from_hex(hashlib.sha256(data).hexdigest())
        if expected is not None and expected != digest:
            raise DigestMismatch(f"manifest has digest {digest}, not {expected}")
        scopes = [repository_scope(repo, ("pull", "push"))]
        with self._request("PUT", f"/v2/{repo}/manifests/{reference}", scopes, body=data,
                           headers={"Content-Type": media_type}) as response:
            if response.status not in (200, 201):
                self._raise_for(response, f"manifest {repo}:{reference}")
            announced = response.header("Docker-Content-Digest")
        if announced and announced != digest:
            raise DigestMismatch(f"registry stored manifest {repo}:{reference} as {announced[:80]}, not {digest}")
        return digest

    def delete_manifest(self, repository: str, digest: str) -> None:
        """Delete a manifest by digest (the registry must allow deletes)."""
        repo = self._repo_path(repository)
        parse_digest(digest)
        with self._request("DELETE", f"/v2/{repo}/manifests/{digest}",
                           [repository_scope(repo, ("delete",))]) as response:
            if response.status not in (200, 202):
                self._raise_for(response, f"manifest {repo}@{digest}")

    def _check_reference(self, reference: str) -> Digest | None:
        """Return the Digest if `reference` is one, None for a valid tag; raise InvalidArgument otherwise."""
        if ":" in reference:
            return parse_digest(reference, "reference")
        if not _TAG_RE.fullmatch(reference):
            raise InvalidArgument(f"invalid tag {reference!r}")
        return None

    #
    # Blobs: download
    #

    def blob_exists(self, repository: str, digest: str) -> bool:
        """Return True if the repository has the blob (HEAD)."""
        repo = self._repo_path(repository)
        parse_digest(digest)
        with self._request("HEAD", f"/v2/{repo}/blobs/{digest}", [repository_scope(repo)]) as response:
            if response.status == 200:
                return True
            if response.status == 404:
                return False
            self._raise_for(response, f"blob {repo}@{digest}")
        return False

    def fetch_blob(self, repository: str, descriptor: Descriptor, writer: BlobWriter,
                   progress: ProgressCallback | None = None) -> None:
        """Stream a blob into `writer`, starting at `writer.offset`, never past `descriptor.size`.

        1. GET the blob, with `Range: bytes=<offset>-` when the writer already holds some bytes;
           redirects to blob storage are followed without our Authorization.
        2. Write each chunk and call `progress(done, total)`; progress may raise Cancelled to stop
           (the writer keeps what it has, so a later call resumes).
        3. On a broken connection or timeout, resume from `writer.offset`, up to FETCH_RETRIES times.
        4. When the whole blob passed through here (offset 0, or a server that ignored Range), check
           its digest and raise DigestMismatch. When resuming from an offset, the writer holds the
           first bytes and checks the digest itself when it commits. A writer that says it
           `verifies_digest` is left to check it from offset 0 too.
        """
        repo = self._repo_path(repository)
        digest = parse_digest(descriptor.digest, "descriptor digest")
        size = descriptor.size
        what = f"blob {repo}@{digest}"
        # {"hasher": ...}: a dict so that a hasher started by an interrupted attempt survives it.
        hash_here = writer.offset == 0 and not getattr(writer, "verifies_digest", False)
        check = {"hasher": hashlib.sha256() if hash_here else None}
        failures = 0
        while True:
            offset = writer.offset
            if offset > size:
                raise DigestMismatch(f"{what}: writer holds {offset} bytes, more than the size {size}")
            if offset == size:
                break  # Complete; a hasher that saw every byte is checked below.
            try:
                self._fetch_once(repo, digest, size, writer, check, progress, what)
                break
            except _WriterFailed as failed:
                # The writer's own error (a full disk, a reader gone): not the network's, not retried.
                raise failed.error from None
            except (OSError, http.client.HTTPException, _Interrupted) as exc:
                failures += 1
                if failures > FETCH_RETRIES:
                    raise RegistryError(f"{what}: download failed after {FETCH_RETRIES} retries: {exc}") from None
                time.sleep(RETRY_DELAY * failures)
            except RegistryError as exc:
                # Connecting failed (transport wraps that); retry it like a broken read.
                if exc.status is not None:
                    raise
                failures += 1
                if failures > FETCH_RETRIES:
                    raise
                time.sleep(RETRY_DELAY * failures)
        if check["hasher"] is not None:
            got = Digest.from_hex(check["hasher"].hexdigest())
            if got != digest:
                raise DigestMismatch(f"{what}: downloaded content has digest {got}")

    def _fetch_once(self, repo, digest, size, writer, check, progress, what) -> None:
        """One GET of the blob from writer.offset, hashing into check["hasher"] when it is set.

        Raise _Interrupted (or OSError, HTTPException) when the connection ends early, so the caller
        resumes; any other failure is final.
        """
        offset = writer.offset
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with self._request("GET", f"/v2/{repo}/blobs/{digest}", [repository_scope(repo)],
                           headers=headers) as response:
            if response.status == 416 and offset:
                # The server says there is nothing past offset: the writer has it all already.
                return
            if response.status == 206:
                start = _content_range_start(response.header("Content-Range"))
                if start != offset:
                    raise RegistryError(f"{what}: asked for bytes from {offset}, got a range from {start}", 206)
                skip = 0
            elif response.status == 200:
                # Range ignored: the whole blob comes again. Skip what the writer has, hash all of it.
                skip = offset
                check["hasher"] = hashlib.sha256()
            else:
                self._raise_for(response, what)
            hasher = check["hasher"]
            remaining = size - offset + skip
            length = response.content_length
            if length is not None and length > remaining:
                raise DigestMismatch(f"{what}: registry sends {length} bytes, more than the size {size}")
            while remaining > 0:
                chunk = response.read(min(READ_CHUNK, remaining))
                if not chunk:
                    raise _Interrupted(f"connection closed with {remaining} bytes to go")
                remaining -= len(chunk)
                if hasher is not None:
                    hasher.update(chunk)
                if skip:
                    dropped = min(skip, len(chunk))
                    skip -= dropped
                    chunk = chunk[dropped:]
                    if not chunk:
                        continue
                try:
                    writer.write(chunk)
                except BaseException as exc:
                    raise _WriterFailed(exc) from exc
                if progress is not None:
                    progress(writer.offset, size)
            # Never read beyond the declared size: a longer body is simply not read (and the
            # connection is closed with the response).

    #
    # Blobs: upload
    #

    def mount_blob(self, repository: str, digest: str, from_repository: str) -> bool:
        """Ask the registry to link a blob it has in `from_repository`; return True if it did.

        On False the caller uploads the blob; the upload session the registry opened instead is
        cancelled here.
        """
        repo = self._repo_path(repository)
        source = self._repo_path(from_repository)
        parse_digest(digest)
        query = urllib.parse.urlencode({"mount": digest, "from": source})
        scopes = [repository_scope(repo, ("pull", "push")), repository_scope(source)]
        with self._request("POST", f"/v2/{repo}/blobs/uploads/?{query}", scopes,
                           headers={"Content-Length": "0"}, body=b"") as response:
            if response.status == 201:
                return True
            if response.status != 202:
                self._raise_for(response, f"mount of {digest} from {source} into {repo}")
            location = response.header("Location")
        if location:
            self._cancel_upload(repo, location)
        return False

    def upload_blob(self, repository: str, digest: str, size: int, fileobj: BinaryIO,
                    progress: ProgressCallback | None = None, chunk_size: int = UPLOAD_CHUNK) -> None:
        """Upload `size` bytes from `fileobj` as blob `digest`.

        1. POST to open an upload session (this is where auth is settled, with no body to resend).
        2. Up to `chunk_size` bytes: one PUT with the bytes and `?digest=`. Otherwise PATCH chunks
           with Content-Range, then an empty PUT with `?digest=`.
        3. The bytes are hashed on the way; a mismatch with `digest` or `size` cancels the session
           and raises DigestMismatch before the registry is asked to commit.
        """
        repo = self._repo_path(repository)
        digest = parse_digest(digest)
        scopes = [repository_scope(repo, ("pull", "push"))]
        what = f"upload of {digest} to {repo}"
        with self._request("POST", f"/v2/{repo}/blobs/uploads/", scopes,
                           headers={"Content-Length": "0"}, body=b"") as response:
            if response.status != 202:
                self._raise_for(response, what)
            location = self._upload_location(response, what)

        hasher = hashlib.sha256()
        sent = 0
        try:
            if size <= chunk_size:
                data = _read_exactly(fileobj, size, what)
                hasher.update(data)
                self._check_upload(hasher, digest, what)
                self._finish_upload(location, digest, data, scopes, what)
                if progress is not None:
                    progress(size, size)
                return
            while sent < size:
                data = _read_exactly(fileobj, min(chunk_size, size - sent), what)
                hasher.update(data)
                headers = {"Content-Type": "application/octet-stream",
                           "Content-Range": f"{sent}-{sent + len(data) - 1}",
                           "Content-Length": str(len(data))}
                with self._request("PATCH", location, scopes, headers=headers, body=data) as response:
                    if response.status != 202:
                        self._raise_for(response, what)
                    location = self._upload_location(response, what)
                sent += len(data)
                if progress is not None:
                    progress(sent, size)
            self._check_upload(hasher, digest, what)
            self._finish_upload(location, digest, b"", scopes, what)
        except (DigestMismatch, Cancelled):
            self._cancel_upload(repo, location)
            raise

    def _upload_location(self, response: transport.Response, what: str) -> str:
        location = response.header("Location")
        if not location:
            raise RegistryError(f"{what}: registry gave no upload Location", response.status)
        url = urllib.parse.urljoin(self.base_url + "/", location)
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise RegistryError(f"{what}: invalid upload Location", response.status)
        return url

    def _check_upload(self, hasher, digest: Digest, what: str) -> None:
        got = Digest.from_hex(hasher.hexdigest())
        if got != digest:
            raise DigestMismatch(f"{what}: content has digest {got}")

    def _finish_upload(self, location: str, digest: Digest, data: bytes, scopes, what: str) -> None:
        separator = "&" if urllib.parse.urlsplit(location).query else "?"
        url = f"{location}{separator}{urllib.parse.urlencode({'digest': digest})}"
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))}
        with self._request("PUT", url, scopes, headers=headers, body=data) as response:
            if response.status not in (201, 204):
                self._raise_for(response, what)

    def _cancel_upload(self, repo: str, location: str) -> None:
        """Best effort: tell the registry to drop an upload session."""
        try:
            with self._request("DELETE", location, [repository_scope(repo, ("pull", "push"))]):
                pass
        except RegistryError:
            pass

    #
    # Listings
    #

    def tags(self, repository: str) -> list[str]:
        """Return the repository's tags, following pagination."""
        repo = self._repo_path(repository)
        found: list[str] = []
        for doc in self._pages(f"/v2/{repo}/tags/list", [repository_scope(repo)], f"tags of {repo}"):
            tags = doc.get("tags") or []
            if not isinstance(tags, list):
                raise RegistryError(f"registry {self.registry} sent an invalid tag list for {repo}")
            found.extend(t for t in tags if isinstance(t, str))
        return found

    def catalog(self, n: int | None = None) -> list[str]:
        """Return repository names (at most `n`), following pagination. Docker Hub has no catalog."""
        path = "/v2/_catalog" + (f"?n={int(n)}" if n else "")
        found: list[str] = []
        for doc in self._pages(path, ["registry:catalog:*"], "the catalog"):
            repositories = doc.get("repositories") or []
            if not isinstance(repositories, list):
                raise RegistryError(f"registry {self.registry} sent an invalid catalog")
            found.extend(r for r in repositories if isinstance(r, str))
            if n and len(found) >= n:
                return found[:n]
        return found

    def _pages(self, path: str, scopes: list[str], what: str):
        """Yield each JSON page of a listing, following `Link: <...>; rel="next"` (bounded)."""
        url = self.base_url + path
        for _ in range(MAX_PAGES):
            with self._request("GET", url, scopes) as response:
                if response.status != 200:
                    self._raise_for(response, what)
                body = response.read_all(MAX_LISTING_BODY, what=what)
                link = response.header("Link")
            try:
                doc = json.loads(body)
            except ValueError:
                raise RegistryError(f"registry {self.registry} sent invalid JSON for {what}") from None
            if not isinstance(doc, dict):
                raise RegistryError(f"registry {self.registry} sent invalid JSON for {what}")
            yield doc
            match = _LINK_NEXT_RE.search(link or "")
            if not match:
                return
            url = urllib.parse.urljoin(url, match.group(1))
            if transport.origin(url) != transport.origin(self.base_url):
                raise RegistryError(f"registry {self.registry} paginates {what} to another host")

    def search(self, term: str, limit: int = 25) -> list[SearchResult]:
        """Search repositories: Docker Hub's /v1/search, else names in the catalog containing `term`."""
        limit = max(1, min(int(limit), 100))
        if self.is_docker_hub:
            return self._search_docker_hub(term, limit)
        term_lower = term.lower()
        names = [name for name in self.catalog() if term_lower in name.lower()]
        return [SearchResult(name=name) for name in names[:limit]]

    def _search_docker_hub(self, term: str, limit: int) -> list[SearchResult]:
        url = f"{DOCKER_HUB_INDEX}/v1/search?{urllib.parse.urlencode({'q': term, 'n': limit})}"
        with transport.request("GET", url, timeout=self.timeout) as response:
            if response.status != 200:
                self._raise_for(response, f"search for {term!r}")
            body = response.read_all(MAX_LISTING_BODY, what="search results")
        try:
            results = json.loads(body).get("results") or []
        except (ValueError, AttributeError):
            raise RegistryError("docker hub sent invalid search results") from None
        found = []
        for item in results[:limit]:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                continue
            found.append(SearchResult(
                name=item["name"],
                description=str(item.get("description") or "")[:1000],
                star_count=int(item.get("star_count") or 0),
                is_official=bool(item.get("is_official")),
                is_automated=bool(item.get("is_automated")),
            ))
        return found


class _Interrupted(Exception):
    """A blob body ended before its declared size: resume."""


class _WriterFailed(Exception):
    """Carries an exception the blob writer raised through the retry loop, which must not retry it."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def _content_range_start(value: str | None) -> int | None:
    """Return the first byte of `Content-Range: bytes <start>-<end>/<total>`, or None."""
    match = re.match(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*$", value or "")
    return int(match.group(1)) if match else None


def _read_exactly(fileobj: BinaryIO, n: int, what: str) -> bytes:
    chunks = []
    remaining = n
    while remaining:
        chunk = fileobj.read(remaining)
        if not chunk:
            raise DigestMismatch(f"{what}: source ended {remaining} bytes short of the declared size")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _media_type_from_body(data: bytes) -> str:
    try:
        value = json.loads(data).get("mediaType")
    except (ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""
