"""Routes of the Docker Engine API. Mounted twice: under ``/v<version>/`` and, for the calls the
CLI makes before it knows the version, unversioned."""

from django.urls import path

from . import system

app_name = "docker"

urlpatterns = [
    path("_ping", system.ping, name="ping"),
    path("version", system.version, name="version"),
    path("info", system.info, name="info"),
]
