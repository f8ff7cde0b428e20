"""Tests of runtime/wwwauthenticate.py: challenge parsing, token fetch and cache, the Bearer flow.

docker-registry has no token server of its own, so a small local one (http.server) plays the realm.
"""

import base64
import http.server
import json
import threading
import urllib.parse

import pytest

from runtime.errors import RegistryError, Unauthorized
from runtime.registry import RegistryClient
from runtime.wwwauthenticate import (
    Authorizer,
    Challenge,
    TokenCache,
    fetch_token,
    parse_challenges,
    repository_scope,
)

#
# parse_challenges
#


def test_it_parses_a_docker_hub_bearer_challenge():
    [challenge] = parse_challenges(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/busybox:pull"')
    assert challenge.scheme == "bearer"
    assert challenge.realm == "https://auth.docker.io/token"
    assert challenge.service == "registry.docker.io"
    assert challenge.scope == "repository:library/busybox:pull"


def test_it_parses_several_challenges_and_quoting():
    challenges = parse_challenges(['Basic realm="a, b"', 'Bearer realm="x\\"y", error="invalid_token"'])
    assert [c.scheme for c in challenges] == ["basic", "bearer"]
    assert challenges[0].realm == "a, b"
    assert challenges[1].realm == 'x"y' and challenges[1].params["error"] == "invalid_token"


def test_it_parses_one_header_with_two_challenges_and_tokens():
    challenges = parse_challenges('Negotiate abc==, BASIC Realm=registry')
    assert [c.scheme for c in challenges] == ["negotiate", "basic"]
    assert challenges[1].realm == "registry"


def test_it_survives_garbage():
    assert parse_challenges("") == []
    assert parse_challenges('Bearer realm="unterminated')[0].realm == "unterminated"
    parse_challenges('=,="' * 1000)


def test_it_builds_repository_scopes():
    assert repository_scope("library/busybox") == "repository:library/busybox:pull"
    assert repository_scope("a/b", ("pull", "push")) == "repository:a/b:pull,push"


#
# TokenCache
#


def test_it_keeps_tokens_until_shortly_before_expiry():
    now = [1000.0]
    cache = TokenCache(clock=lambda: now[0])
    cache.put("r", "repository:a:pull", "tok", 300)
    assert cache.get("r", "repository:a:pull") == "tok"
    assert cache.get("r", "repository:b:pull") is None
    assert cache.get("other", "repository:a:pull") is None
    now[0] += 289
    assert cache.get("r", "repository:a:pull") == "tok"
    now[0] += 2
    assert cache.get("r", "repository:a:pull") is None


def test_it_gives_short_lived_tokens_the_minimum_lifetime():
    now = [0.0]
    cache = TokenCache(clock=lambda: now[0])
    cache.put("r", "s", "tok", 5)
    now[0] = 40
    assert cache.get("r", "s") == "tok"


#
# A token server and a registry that wants its tokens
#


class TokenServer(http.server.ThreadingHTTPServer):
    """A token realm: anonymous gets pull only; user "alice"/"pw" gets what she asks; others 401."""

    daemon_threads = True

    def __init__(self):
        self.requests = []
        self.issued = 0
        super().__init__(("127.0.0.1", 0), TokenHandler)
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def realm(self):
        return f"http://127.0.0.1:{self.server_address[1]}/token"


class TokenHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        auth = self.headers.get("Authorization")
        self.server.requests.append((query, auth))
        user = None
        if auth:
            user, _, password = base64.b64decode(auth.split(" ", 1)[1]).decode().partition(":")
            if (user, password) != ("alice", "pw"):
                self._answer(401, {"details": "incorrect username or password"})
                return
        scopes = query.get("scope", [])
        if user is None:
            scopes = [s for s in scopes if s.endswith(":pull")]
        self.server.issued += 1
        token = f"token-{self.server.issued}:" + ",".join(scopes)
        self._answer(200, {"token": token, "expires_in": 300, "issued_at": "2024-01-01T00:00:00Z"})

    def _answer(self, status, doc):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def token_server():
    server = TokenServer()
    yield server
    server.shutdown()


def test_it_fetches_a_token_with_service_and_scopes(token_server):
    challenge = Challenge("bearer", {"realm": token_server.realm, "service": "test-registry"})
    token, expires_in = fetch_token(challenge, ["repository:a:pull", "repository:b:pull"])
    assert token == "token-1:repository:a:pull,repository:b:pull" and expires_in == 300
    query, auth = token_server.requests[0]
    assert query == {"service": ["test-registry"], "scope": ["repository:a:pull", "repository:b:pull"]}
    assert auth is None


def test_it_sends_basic_credentials_to_the_realm(token_server):
    challenge = Challenge("bearer", {"realm": token_server.realm})
    token, _ = fetch_token(challenge, ["repository:a:pull,push"], ("alice", "pw"))
    assert token.endswith("repository:a:pull,push")
    assert token_server.requests[0][1] == "Basic " + base64.b64encode(b"alice:pw").decode()


def test_it_raises_unauthorized_when_the_realm_refuses(token_server):
    challenge = Challenge("bearer", {"realm": token_server.realm})
    with pytest.raises(Unauthorized, match="refused user 'alice'"):
        fetch_token(challenge, ["repository:a:pull"], ("alice", "wrong"))


def test_it_refuses_a_plain_http_realm_off_loopback():
    challenge = Challenge("bearer", {"realm": "http://auth.example.com/token"})
    with pytest.raises(RegistryError, match="refusing plain HTTP"):
        fetch_token(challenge, ["repository:a:pull"])


def test_it_caches_tokens_per_scope(token_server):
    authorizer = Authorizer("reg")
    header = authorizer.handle_challenge([f'Bearer realm="{token_server.realm}",service="s"'],
                                         ["repository:a:pull"], None)
    assert header == "Bearer token-1:repository:a:pull"
    assert authorizer.authorization(["repository:a:pull"]) == header
    assert authorizer.authorization(["repository:b:pull"]) == "Bearer token-2:repository:b:pull"
    assert token_server.issued == 2


def test_it_asks_basic_only_with_credentials():
    with pytest.raises(Unauthorized, match="requires a username and password"):
        Authorizer("reg").handle_challenge(['Basic realm="r"'], [], None)
    authorizer = Authorizer("reg", ("u", "p"))
    header = authorizer.handle_challenge(['Basic realm="r"'], [], None)
    assert header == "Basic " + base64.b64encode(b"u:p").decode()
    with pytest.raises(Unauthorized, match="refused the password of user 'u'"):
        authorizer.handle_challenge(['Basic realm="r"'], [], header)


def test_it_refuses_unknown_schemes():
    with pytest.raises(Unauthorized, match=r"unsupported authentication \(negotiate\)"):
        Authorizer("reg").handle_challenge(["Negotiate"], [], None)


class BearerRegistryHandler(http.server.BaseHTTPRequestHandler):
    """Just enough of a registry to check Bearer tokens: /v2/ and one manifest."""

    realm = None
    seen = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        auth = self.headers.get("Authorization") or ""
        type(self).seen.append((self.path, auth))
        wanted = "" if self.path == "/v2/" else "repository:private/app:pull"
        if not auth.startswith("Bearer ") or wanted not in auth:
            body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
            self.send_response(401)
            scope = f',scope="{wanted}"' if wanted else ""
            self.send_header("WWW-Authenticate", f'Bearer realm="{self.realm}",service="fake"{scope}')
        else:
            body = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}'
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.oci.image.index.v1+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_the_client_follows_a_bearer_challenge(token_server):
    BearerRegistryHandler.realm = token_server.realm
    BearerRegistryHandler.seen = []
    registry = http.server.ThreadingHTTPServer(("127.0.0.1", 0), BearerRegistryHandler)
    threading.Thread(target=registry.serve_forever, args=(0.05,), daemon=True).start()
    try:
        client = RegistryClient(f"127.0.0.1:{registry.server_address[1]}")
        client.ping()
        data, media_type, _ = client.get_manifest("private/app", "latest")
        assert media_type == "application/vnd.oci.image.index.v1+json"
        # Second time: the cached token goes with the first request, no 401.
        before = len(BearerRegistryHandler.seen)
        client.get_manifest("private/app", "latest")
        assert len(BearerRegistryHandler.seen) == before + 1
        assert BearerRegistryHandler.seen[-1][1].startswith("Bearer token-")
        # A refused token is retried once with a fresh one, then reported.
        with pytest.raises(Unauthorized, match="refused anonymous access"):
            client.get_manifest("private/other", "latest")
    finally:
        registry.shutdown()
