"""Every page, API call and websocket needs an authenticated user; tokens and CSRF behave."""

import pytest
from django.contrib.auth.models import User
from django.test import Client

from project.models import ApiToken


@pytest.fixture
def alice(db):
    return User.objects.create_user("alice", password="alice-password-1")


@pytest.fixture
def bob(db):
    return User.objects.create_user("bob", password="bob-password-1")


class TestLoginRequired:
    @pytest.mark.parametrize("path", ["/", "/images/", "/containers/", "/jobs/", "/accounts/tokens/"])
    def test_it_sends_anonymous_browsers_to_login(self, client, db, path):
        response = client.get(path)
        assert response.status_code == 302
        assert response["Location"] == f"/accounts/login/?next={path}"

    def test_it_sends_anonymous_admin_visitors_to_login(self, client, db):
        response = client.get("/admin/")
        assert response.status_code == 302
        assert "/login/" in response["Location"]

    @pytest.mark.parametrize("path", ["/_ping", "/version", "/info", "/v1.41/version", "/v1.41/info", "/api/jobs/"])
    def test_it_answers_401_to_anonymous_api_calls(self, client, db, path):
        response = client.get(path)
        assert response.status_code == 401
        assert "Bearer" in response.json()["message"]

    def test_the_login_page_is_public(self, client, db):
        assert client.get("/accounts/login/").status_code == 200


class TestLogin:
    def test_it_logs_in_with_the_right_password(self, client, alice):
        response = client.post("/accounts/login/", {"username": "alice", "password": "alice-password-1"})
        assert response.status_code == 302
        assert client.get("/").status_code == 200

    def test_it_refuses_a_wrong_password(self, client, alice):
        response = client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
        assert response.status_code == 200
        assert b"didn't match" in response.content
        assert client.get("/").status_code == 302

    def test_logout_ends_the_session(self, client, alice):
        client.force_login(alice)
        client.post("/accounts/logout/")
        assert client.get("/").status_code == 302


class TestTokens:
    def test_a_valid_token_authenticates_api_calls(self, client, alice):
        _, clear = ApiToken.objects.create_token(alice)
        response = client.get("/v1.41/version", HTTP_AUTHORIZATION=f"Bearer {clear}")
        assert response.status_code == 200
        assert response.json()["ApiVersion"] == "1.41"

    def test_it_notes_when_a_token_was_used(self, client, alice):
        token, clear = ApiToken.objects.create_token(alice)
        client.get("/_ping", HTTP_AUTHORIZATION=f"Bearer {clear}")
        token.refresh_from_db()
        assert token.last_used_at is not None

    def test_a_revoked_token_is_refused(self, client, alice):
        token, clear = ApiToken.objects.create_token(alice)
        token.revoke()
        response = client.get("/_ping", HTTP_AUTHORIZATION=f"Bearer {clear}")
        assert response.status_code == 401
        assert "revoked" in response.json()["message"]

    def test_an_unknown_token_is_refused(self, client, db):
        response = client.get("/_ping", HTTP_AUTHORIZATION="Bearer berth_nonsense")
        assert response.status_code == 401

    def test_a_token_of_an_inactive_user_is_refused(self, client, alice):
        _, clear = ApiToken.objects.create_token(alice)
        alice.is_active = False
        alice.save()
        assert client.get("/_ping", HTTP_AUTHORIZATION=f"Bearer {clear}").status_code == 401

    def test_a_role_taken_away_applies_to_the_next_call_of_a_token(self, client, alice):
        """Tokens are remembered a few seconds between requests: never past a change of roles."""
        from django.contrib.auth.models import Group

        alice.groups.add(Group.objects.get(name="operator"))
        _, clear = ApiToken.objects.create_token(alice)
        auth = {"HTTP_AUTHORIZATION": f"Bearer {clear}", "content_type": "application/json"}
        # An operator may create containers: this one is refused for its body (no image), not the role.
        assert client.post("/v1.41/containers/create", "{}", **auth).status_code == 400
        alice.groups.clear()
        assert client.post("/v1.41/containers/create", "{}", **auth).status_code == 403

    def test_only_the_hash_is_stored(self, alice):
        token, clear = ApiToken.objects.create_token(alice)
        assert clear not in token.key_hash
        assert not ApiToken.objects.filter(key_hash=clear).exists()

    def test_the_token_page_creates_and_shows_the_token_once(self, client, alice):
        client.force_login(alice)
        response = client.post("/accounts/tokens/", {"description": "laptop"})
        assert response.status_code == 200
        clear = response.context["new_token"]
        assert clear.startswith("berth_")
        assert clear.encode() in response.content
        assert ApiToken.objects.get(user=alice).description == "laptop"
        # Shown once: the list page never shows it again.
        assert clear.encode() not in client.get("/accounts/tokens/").content

    def test_the_token_page_revokes(self, client, alice):
        token, clear = ApiToken.objects.create_token(alice)
        client.force_login(alice)
        response = client.post(f"/accounts/tokens/{token.pk}/revoke/")
        assert response.status_code == 302
        token.refresh_from_db()
        assert token.revoked_at is not None
        assert Client().get("/_ping", HTTP_AUTHORIZATION=f"Bearer {clear}").status_code == 401

    def test_nobody_revokes_another_users_token(self, client, alice, bob):
        token, _ = ApiToken.objects.create_token(alice)
        client.force_login(bob)
        assert client.post(f"/accounts/tokens/{token.pk}/revoke/").status_code == 404
        token.refresh_from_db()
        assert token.revoked_at is None

    def test_the_token_page_lists_only_the_users_own_tokens(self, client, alice, bob):
        ApiToken.objects.create_token(alice, "alice's")
        ApiToken.objects.create_token(bob, "bob's")
        client.force_login(bob)
        content = client.get("/accounts/tokens/").content
        assert b"bob&#x27;s" in content
        assert b"alice&#x27;s" not in content


class TestCsrf:
    def test_a_forged_csrf_token_changes_nothing(self, alice):
        client = Client(enforce_csrf_checks=True)
        client.force_login(alice)
        client.get("/accounts/tokens/")
        response = client.post("/accounts/tokens/", {"description": "x", "csrfmiddlewaretoken": "forged" * 8})
        assert response.status_code == 403
        assert not ApiToken.objects.exists()

    def test_a_token_request_needs_no_csrf_token(self, alice):
        _, clear = ApiToken.objects.create_token(alice)
        client = Client(enforce_csrf_checks=True)
        response = client.post("/v1.41/version", HTTP_AUTHORIZATION=f"Bearer {clear}")
        # Reached the view (which only allows GET) instead of being stopped by CSRF.
        assert response.status_code == 405
