"""Plain HTTP(S) requests for the registry client, over `http.client`, with every read bounded.

What this module guarantees, so that registry.py and wwwauthenticate.py need not repeat it:

- every connect and every read has a timeout (a socket timeout: silence longer than `timeout` fails);
- headers are bounded by http.client itself (at most 100 header lines of 64 KiB each);
- `Response.read_all(limit)` never keeps more than `limit` bytes;
- redirects (GET and HEAD only) are bounded by MAX_REDIRECTS, never downgrade HTTPS to HTTP, and drop
  the Authorization header as soon as they leave the host it was meant for.

One connection per request: simple and thread-safe; keep-alive pooling can come later.
"""

from __future__ import annotations

import http.client
import ipaddress
import ssl
import urllib.parse
from typing import Mapping

from runtime.errors import RegistryError

MAX_REDIRECTS = 5
# Registry error documents and token answers are small; anything bigger is not worth reading.
MAX_SMALL_BODY = 1024 * 1024
USER_AGENT = "berth/0.1"

_REDIRECT_STATUSES = (301, 302, 303, 307, 308)


def is_loopback_host(host: str) -> bool:
    """Return True for localhost, 127.0.0.0/8 and ::1, with or without a port."""
    name = split_host_port(host)[0].lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def split_host_port(host: str) -> tuple[str, int | None]:
    """Split "host", "host:port", "[::1]:port" or "::1" into (host, port)."""
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise RegistryError(f"invalid registry host {host!r}")
        rest = host[end + 1:]
        port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
        return host[1:end], port
    if host.count(":") == 1:
        name, _, port_text = host.partition(":")
        if not port_text.isdigit():
            raise RegistryError(f"invalid port in registry host {host!r}")
        return name, int(port_text)
    return host, None


class Response:
    """An HTTP response whose body is read in bounded pieces. Close it when done (or use `with`)."""

    def __init__(self, connection: http.client.HTTPConnection, raw: http.client.HTTPResponse, url: str):
        self._connection = connection
        self._raw = raw
        self.url = url
        self.status = raw.status
        self.reason = raw.reason
        self.headers = raw.headers

    def __enter__(self) -> "Response":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def header(self, name: str) -> str | None:
        """Return the header's value, or None."""
        return self.headers.get(name)

    @property
    def content_length(self) -> int | None:
        """Return the Content-Length as an int, None when absent, raise RegistryError if malformed."""
        value = self.headers.get("Content-Length")
        if value is None:
            return None
        if not value.strip().isdigit():
            raise RegistryError(f"invalid Content-Length {value[:40]!r} from {self.url}", self.status)
        return int(value)

    def read(self, n: int) -> bytes:
        """Read at most `n` bytes of the body (b"" at its end). Network errors propagate as OSError or
        http.client.HTTPException so that a caller can resume."""
        return self._raw.read(n)

    def read_all(self, limit: int = MAX_SMALL_BODY, what: str = "response") -> bytes:
        """Read the whole body, refusing one over `limit` bytes before reading it when possible."""
        length = self.content_length
        if length is not None and length > limit:
            raise RegistryError(f"{what} from {self.url} is {length} bytes, over the limit of {limit}", self.status)
        chunks = []
        total = 0
        try:
            while True:
                chunk = self._raw.read(min(65536, limit + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if total > limit:
                    raise RegistryError(f"{what} from {self.url} is over the limit of {limit} bytes", self.status)
        except (OSError, http.client.HTTPException) as exc:
            raise RegistryError(f"reading {what} from {self.url} failed: {exc}", self.status) from None
        return b"".join(chunks)

    def close(self) -> None:
        """Close the response and its connection."""
        self._raw.close()
        self._connection.close()


def request(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 30.0,
    allow_http: bool = False,
    follow_redirects: bool = True,
    ssl_context: ssl.SSLContext | None = None,
) -> Response:
    """Send one request and return the response, following redirects for GET and HEAD.

    `allow_http` permits plain HTTP for a non-loopback host (an "insecure" registry). A redirect is
    followed only if the new URL is as secure as the old one; `Authorization` goes only to the
    scheme, host and port of the first URL. Connection failures raise RegistryError.
    """
    headers = dict(headers or {})
    headers.setdefault("User-Agent", USER_AGENT)
    first_origin = origin(url)
    for _ in range(MAX_REDIRECTS + 1):
        response = _send(method, url, headers, body, timeout, allow_http, ssl_context)
        if not (follow_redirects and method in ("GET", "HEAD") and response.status in _REDIRECT_STATUSES):
            return response
        location = response.header("Location")
        response.close()
        if not location:
            raise RegistryError(f"redirect from {url} has no Location", response.status)
        target = urllib.parse.urljoin(url, location)
        if urllib.parse.urlsplit(url).scheme == "https" and urllib.parse.urlsplit(target).scheme != "https":
            raise RegistryError(f"refusing redirect from {url} to insecure {_redact(target)}", response.status)
        if origin(target) != first_origin:
            # Blob storage (S3, a CDN) gets a signed URL, never the registry's credentials.
            headers.pop("Authorization", None)
        url = target
    raise RegistryError(f"too many redirects (over {MAX_REDIRECTS}) starting from {method} {_redact(url)}")


def origin(url: str) -> tuple[str, str]:
    """Return (scheme, host:port) of a URL: requests to another origin get no credentials."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.netloc.lower()


def _redact(url: str) -> str:
    """Drop the query string (signed URLs carry secrets there) for error messages."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _send(method, url, headers, body, timeout, allow_http, ssl_context) -> Response:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RegistryError(f"unsupported URL {_redact(url)}")
    if parts.scheme == "http" and not (allow_http or is_loopback_host(parts.hostname)):
        raise RegistryError(f"refusing plain HTTP to {parts.netloc}: not a loopback or insecure registry")
    if parts.scheme == "https":
        context = ssl_context or ssl.create_default_context()
        connection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=context)
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    try:
        connection.request(method, target, body=body, headers=headers)
        raw = connection.getresponse()
    except (OSError, http.client.HTTPException) as exc:
        connection.close()
        raise RegistryError(f"{method} {_redact(url)} failed: {exc or type(exc).__name__}") from None
    return Response(connection, raw, url)
