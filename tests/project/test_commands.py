"""manage.py createtoken and ensureadmin, as `make run` and users call them."""

import io

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client


def test_createtoken_prints_a_working_token_on_its_last_line(db):
    User.objects.create_user("carol", password="x-password-9")
    out = io.StringIO()
    call_command("createtoken", "carol", stdout=out)
    token = out.getvalue().strip().splitlines()[-1]
    response = Client().get("/v1.41/info", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200


def test_createtoken_refuses_an_unknown_user(db):
    with pytest.raises(CommandError, match="no such user: nobody"):
        call_command("createtoken", "nobody")


def test_ensureadmin_takes_the_password_from_the_environment(db, monkeypatch):
    monkeypatch.setenv("BERTH_ADMIN_USER", "root2")
    monkeypatch.setenv("BERTH_ADMIN_PASSWORD", "s3cret-enough-pw")
    call_command("ensureadmin", stdout=io.StringIO())
    user = User.objects.get(username="root2")
    assert user.is_superuser and user.check_password("s3cret-enough-pw")
    assert user.groups.filter(name="admin").exists()


def test_ensureadmin_generates_and_prints_a_password_once(db, monkeypatch):
    monkeypatch.setenv("BERTH_ADMIN_USER", "root3")
    monkeypatch.delenv("BERTH_ADMIN_PASSWORD", raising=False)
    out = io.StringIO()
    call_command("ensureadmin", stdout=out)
    password = out.getvalue().split("password: ")[1].split()[0]
    assert User.objects.get(username="root3").check_password(password)
    # A second run keeps the account and its password, and prints no password.
    out = io.StringIO()
    call_command("ensureadmin", stdout=out)
    assert "password:" not in out.getvalue()
    assert User.objects.get(username="root3").check_password(password)
