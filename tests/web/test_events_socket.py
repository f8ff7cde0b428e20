"""/ws/events: authenticated, Origin-checked, and pushing the health of Redis and the worker."""

import json
import re

import pytest
import websockets
from websockets.sync.client import connect

pytestmark = pytest.mark.live


def session_cookie(berth) -> str:
    """Log in through the login form, as a browser does; return the Cookie header."""
    status, headers, body = berth.request("GET", "/accounts/login/", token=False)
    csrf = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', body).group(1).decode()
    cookie = headers["Set-Cookie"].split(";")[0]
    form = f"username={berth.username}&password={berth.password}&csrfmiddlewaretoken={csrf}"
    status, headers, _ = berth.request(
        "POST", "/accounts/login/", body=form.encode(), token=False,
        headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded",
                 "Referer": berth.url + "/accounts/login/"},
    )
    assert status == 302, "login failed"
    return "; ".join(c.split(";")[0] for c in headers["Set-Cookie"].split(", ") if "=" in c.split(";")[0])


def first_message(url, cookie, origin):
    """Open the socket as a page of ``origin`` would; return the first health message."""
    with connect(url, additional_headers={"Cookie": cookie}, origin=origin, open_timeout=10) as ws:
        while True:
            message = json.loads(ws.recv(timeout=20))
            if message["type"] == "health":
                return message


def test_it_pushes_health_to_a_logged_in_page(berth):
    cookie = session_cookie(berth)
    ws_url = berth.url.replace("http", "ws") + "/ws/events"
    message = first_message(ws_url, cookie, berth.url)
    assert message["health"]["redis"]["ok"] is True
    assert message["health"]["worker"]["ok"] is True, message
    assert "berth@testnode" in message["health"]["worker"]["detail"]


def test_it_refuses_a_page_of_another_site(berth):
    cookie = session_cookie(berth)
    ws_url = berth.url.replace("http", "ws") + "/ws/events"
    with pytest.raises(websockets.exceptions.InvalidStatus) as exc:
        first_message(ws_url, cookie, "http://evil.example")
    assert exc.value.response.status_code == 403


def test_it_refuses_an_anonymous_socket(berth):
    ws_url = berth.url.replace("http", "ws") + "/ws/events"
    with pytest.raises((websockets.exceptions.InvalidStatus, websockets.exceptions.ConnectionClosed)):
        first_message(ws_url, "", berth.url)
