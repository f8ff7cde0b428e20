"""Registry authentication: `WWW-Authenticate` challenges, bearer tokens and their cache.

The flow (Docker's token auth, which the OCI distribution spec defers to):

1. A request to the registry answers 401 with `WWW-Authenticate: Bearer realm="...",service="...",
   scope="repository:library/busybox:pull"` (or `Basic realm="..."`).
2. For Bearer, we GET `<realm>?service=<service>&scope=<scope>` (one `scope` parameter per scope), with
   Basic credentials when we have some, and read `{"token": ..., "expires_in": ...}`.
3. We retry with `Authorization: Bearer <token>`, and keep the token per (registry, scope) until it
   expires, so later requests send it without another 401.

`Authorizer` holds that state for one registry; registry.py asks it for a header before each request
and hands it the challenge after a 401.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable, Iterable

from runtime import transport
from runtime.errors import RegistryError, Unauthorized

# Tokens with no expires_in live 60 seconds (the token spec's default); we never trust one for less.
DEFAULT_TOKEN_LIFETIME = 60
# Renew a little before the server would refuse the token.
EXPIRY_MARGIN = 10
MAX_TOKEN_RESPONSE = 1024 * 1024

Credentials = tuple[str, str]


@dataclass(frozen=True)
class Challenge:
    """One challenge of a WWW-Authenticate header: its scheme (lowercase) and parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        """The token endpoint (Bearer) or protection space name (Basic)."""
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        """The service name the token server expects, e.g. "registry.docker.io"."""
        return self.params.get("service")

    @property
    def scope(self) -> str | None:
        """The scope the registry asked for, when it said."""
        return self.params.get("scope")


def parse_challenges(values: str | Iterable[str]) -> list[Challenge]:
    """Parse one or more WWW-Authenticate header values into challenges (RFC 7235 section 4.1).

    Unparseable trailing text is ignored rather than fatal: a registry's odd header should not hide
    the challenge we can use. Schemes are lowercased; parameter names too; values keep their case.
    """
    if isinstance(values, str):
        values = [values]
    challenges: list[Challenge] = []
    for value in values:
        challenges.extend(_parse_header(value[:8192]))
    return challenges


def _parse_header(text: str) -> list[Challenge]:
    challenges: list[Challenge] = []
    pos = 0
    n = len(text)
    current: Challenge | None = None

    def skip(chars: str) -> None:
        nonlocal pos
        while pos < n and text[pos] in chars:
            pos += 1

    def token() -> str:
        nonlocal pos
        start = pos
        while pos < n and text[pos] not in ' \t,="':
            pos += 1
        return text[start:pos]

    while pos < n:
        skip(" \t,")
        if pos >= n:
            break
        word = token()
        if not word:
            break  # Stray quote or "=": give up on the rest.
        skip(" \t")
        if pos < n and text[pos] == "=" and current is not None and not text.startswith("==", pos):
            # name=value: a parameter of the current challenge.
            pos += 1
            skip(" \t")
            if pos < n and text[pos] == '"':
                pos += 1
                chars = []
                while pos < n and text[pos] != '"':
                    if text[pos] == "\\" and pos + 1 < n:
                        pos += 1
                    chars.append(text[pos])
                    pos += 1
                pos += 1  # Closing quote.
                value = "".join(chars)
            else:
                value = token()
            current.params[word.lower()] = value
        elif pos < n and text[pos] == "=":
            # token68 (e.g. "Negotiate abc==") belongs to the current challenge; we do not use it.
            while pos < n and text[pos] not in ",":
                pos += 1
        else:
            current = Challenge(scheme=word.lower(), params={})
            challenges.append(current)
    return challenges


def repository_scope(repository: str, actions: Iterable[str] = ("pull",)) -> str:
    """Return the token scope for actions on a repository, e.g. "repository:library/busybox:pull,push"."""
    return f"repository:{repository}:{','.join(actions)}"


def basic_authorization(credentials: Credentials) -> str:
    """Return the Authorization header value for Basic credentials."""
    username, password = credentials
    raw = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


class TokenCache:
    """Bearer tokens by (registry, scope), each kept until shortly before it expires. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, registry: str, scope: str) -> str | None:
        """Return a token still valid for the scope, or None."""
        with self._lock:
            entry = self._tokens.get((registry, scope))
            if entry is None:
                return None
            token, expires_at = entry
            if self._clock() >= expires_at:
                del self._tokens[(registry, scope)]
                return None
            return token

    def put(self, registry: str, scope: str, token: str, expires_in: float) -> None:
        """Keep a token for `expires_in` seconds, less a safety margin."""
        lifetime = max(expires_in, DEFAULT_TOKEN_LIFETIME)
        with self._lock:
            self._tokens[(registry, scope)] = (token, self._clock() + lifetime - EXPIRY_MARGIN)

    def forget(self, registry: str, scope: str) -> None:
        """Drop the token for (registry, scope), if any."""
        with self._lock:
            self._tokens.pop((registry, scope), None)

    def clear(self) -> None:
        """Forget every token."""
        with self._lock:
            self._tokens.clear()


def fetch_token(
    challenge: Challenge,
    scopes: Iterable[str],
    credentials: Credentials | None = None,
    *,
    timeout: float = 30.0,
    allow_http: bool = False,
) -> tuple[str, int]:
    """Ask the challenge's realm for a bearer token; return (token, expires_in seconds).

    The realm must be HTTPS unless it is on a loopback host or `allow_http` (an insecure registry).
    Raise Unauthorized when the token server refuses the credentials, RegistryError otherwise.
    """
    realm = challenge.realm
    if not realm:
        raise RegistryError("bearer challenge has no realm")
    parts = urllib.parse.urlsplit(realm)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise RegistryError(f"bearer realm {realm[:200]!r} is not an http(s) URL")
    query = [("scope", scope) for scope in scopes if scope]
    if challenge.service:
        query.insert(0, ("service", challenge.service))
    separator = "&" if parts.query else "?"
    url = realm + (separator + urllib.parse.urlencode(query) if query else "")
    headers = {"Accept": "application/json"}
    if credentials:
        headers["Authorization"] = basic_authorization(credentials)
    with transport.request("GET", url, headers=headers, timeout=timeout, allow_http=allow_http) as response:
        body = response.read_all(MAX_TOKEN_RESPONSE, what="token response")
        if response.status in (401, 403):
            who = f"user {credentials[0]!r}" if credentials else "anonymous access"
            raise Unauthorized(f"token server {parts.netloc} refused {who}", response.status)
        if response.status != 200:
            raise RegistryError(f"token server {parts.netloc} answered {response.status}", response.status)
    try:
        doc = json.loads(body)
    except ValueError:
        raise RegistryError(f"token server {parts.netloc} sent invalid JSON") from None
    token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
    if not isinstance(token, str) or not token:
        raise RegistryError(f"token server {parts.netloc} sent no token")
    expires_in = doc.get("expires_in")
    if not isinstance(expires_in, int) or isinstance(expires_in, bool) or expires_in <= 0:
        expires_in = DEFAULT_TOKEN_LIFETIME
    return token, expires_in


class Authorizer:
    """Authorization headers for one registry, learnt from its challenges.

    Until the registry has challenged us we send nothing (a registry without auth never sees our
    credentials). After a Bearer challenge we fetch and cache a token per scope; after a Basic one we
    send the credentials with every request.
    """

    def __init__(self, registry: str, credentials: Credentials | None = None, *, timeout: float = 30.0,
                 allow_http: bool = False, cache: TokenCache | None = None):
        self.registry = registry
        self.credentials = credentials
        self.timeout = timeout
        self.allow_http = allow_http
        self.cache = cache if cache is not None else TokenCache()
        self._challenge: Challenge | None = None

    def authorization(self, scopes: list[str]) -> str | None:
        """Return the Authorization header to send for these scopes, or None."""
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return basic_authorization(self.credentials) if self.credentials else None
        key = " ".join(sorted(scopes))
        token = self.cache.get(self.registry, key)
        if token is None:
            token, expires_in = fetch_token(challenge, sorted(scopes), self.credentials,
                                            timeout=self.timeout, allow_http=self.allow_http)
            self.cache.put(self.registry, key, token, expires_in)
        return "Bearer " + token

    def handle_challenge(self, header_values: list[str], scopes: list[str], sent: str | None) -> str:
        """After a 401: learn the challenge and return the header to retry with.

        `sent` is the Authorization we had sent. Raise Unauthorized when retrying cannot help: no
        challenge we support, Basic without credentials, or the same Basic credentials refused again.
        The caller retries once with the header returned and treats a second 401 as refusal.
        """
        challenges = parse_challenges(header_values)
        chosen = next((c for c in challenges if c.scheme == "bearer"), None)
        chosen = chosen or next((c for c in challenges if c.scheme == "basic"), None)
        if chosen is None:
            schemes = ", ".join(c.scheme for c in challenges) or "none"
            raise Unauthorized(f"registry {self.registry} asks for unsupported authentication ({schemes})", 401)
        if chosen.scheme == "basic":
            if not self.credentials:
                raise Unauthorized(f"registry {self.registry} requires a username and password", 401)
            header = basic_authorization(self.credentials)
            if sent == header:
                raise Unauthorized(f"registry {self.registry} refused the password of user "
                                   f"{self.credentials[0]!r}", 401)
            self._challenge = chosen
            return header
        # A cached token that got refused (revoked, or expired early) is no use: fetch a fresh one.
        self.cache.forget(self.registry, " ".join(sorted(scopes)))
        self._challenge = chosen
        wanted = list(scopes)
        if not wanted and chosen.scope:
            wanted = chosen.scope.split(" ")
        header = self.authorization(wanted)
        assert header is not None
        return header
