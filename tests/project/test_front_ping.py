"""The front's ``/_ping`` (project/front.py Front.ping): Daphne answers a ping as any request, and a
200 is replayed to the same credentials for a few seconds; anything else is never replayed. Here
the front talks to a small stand-in for Daphne that counts what reaches it; the live tests run the
real one (tests/web/test_hijack.py)."""

import asyncio
import contextlib
import os
import tempfile
import threading

from project.front import Front, Head

GOOD = "Bearer good"


@contextlib.contextmanager
def loop_thread():
    """An event loop in a thread of its own (pytest's thread may have one running already:
    Playwright's); yields ``run(coroutine)``, which waits for the coroutine's result."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield lambda coro: asyncio.run_coroutine_threadsafe(coro, loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def _daphne(path: str, seen: list):
    async def answer(reader, writer):
        head = Head((await reader.readuntil(b"\r\n\r\n"))[:-4])
        seen.append((head.method, head.get("authorization")))
        if head.get("authorization") == "Bearer chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nOK\r\n0\r\n\r\n")
        elif head.get("authorization") == GOOD:
            body = b"" if head.method == "HEAD" else b"OK"
            writer.write(b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nConnection: close\r\n"
                         b"Content-Length: 2\r\n\r\n" + body)
        else:
            writer.write(b'HTTP/1.1 401 Unauthorized\r\nContent-Length: 15\r\n\r\n{"message": ""}')
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(answer, path)


def _ping(method: str, auth: str | None) -> Head:
    lines = [f"{method} /_ping HTTP/1.1", "Host: 127.0.0.1"] + ([f"Authorization: {auth}"] if auth else [])
    return Head("\r\n".join(lines).encode())


def test_a_200_is_replayed_to_the_same_credentials_only():
    async def scenario():
        seen = []
        with tempfile.TemporaryDirectory() as tmp:
            sock = os.path.join(tmp, "daphne.sock")
            server = await _daphne(sock, seen)
            front = Front(sock, "secret")
            first = await front.ping(_ping("GET", GOOD), "127.0.0.1")
            again = await front.ping(_ping("GET", GOOD), "127.0.0.1")
            head = await front.ping(_ping("HEAD", GOOD), "127.0.0.1")
            bad = [await front.ping(_ping("GET", "Bearer bad"), "127.0.0.1") for _ in range(2)]
            anonymous = await front.ping(_ping("GET", None), "127.0.0.1")
            chunked = [await front.ping(_ping("GET", "Bearer chunked"), "127.0.0.1") for _ in range(2)]
            server.close()
            return seen, first, again, head, bad, anonymous, chunked

    with loop_thread() as run:
        seen, first, again, head, bad, anonymous, chunked = run(scenario())
    # Any other framing is relayed as it came, and never replayed.
    assert chunked[0] == chunked[1] == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nOK\r\n0\r\n\r\n"
    assert first == again and first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"\r\n\r\nOK")
    assert b"Connection" not in first  # Daphne's "close" is not the client's
    assert head.endswith(b"Content-Length: 2\r\n\r\n")  # HEAD: the length, no body
    assert all(b.startswith(b"HTTP/1.1 401") for b in bad)
    assert anonymous is None  # no credentials: forwarded as any request
    # Daphne saw the good GET once, the HEAD once, and every bad one.
    assert seen == [("GET", GOOD), ("HEAD", GOOD), ("GET", "Bearer bad"), ("GET", "Bearer bad"),
                    ("GET", "Bearer chunked"), ("GET", "Bearer chunked")]


def test_a_change_of_tokens_or_users_ends_the_replay(settings, tmp_path, db, django_user_model):
    """Django replaces DATA_DIR/auth_changed when a token, user or group changes (a revoked token):
    the front asks Daphne again then."""
    from project.models import ApiToken

    settings.DATA_DIR = tmp_path
    user = django_user_model.objects.create_user("revoker", password="x")
    token, _ = ApiToken.objects.create_token(user, "t")
    seen = []
    with loop_thread() as run:
        sock = str(tmp_path / "daphne.sock")
        server = run(_daphne(sock, seen))
        front = Front(sock, "secret", auth_changed=str(tmp_path / "auth_changed"))

        def ping_twice():
            for _ in range(2):
                answer = run(front.ping(_ping("GET", GOOD), "127.0.0.1"))
                assert answer.startswith(b"HTTP/1.1 200")

        ping_twice()
        assert len(seen) == 1
        token.revoked_at = token.created_at
        token.save()  # what the tokens page's Revoke does
        ping_twice()
        assert len(seen) == 2
        server.close()
