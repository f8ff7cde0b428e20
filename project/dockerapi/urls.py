"""Routes of the Docker Engine API. Mounted twice: under ``/v<version>/`` and, for the calls the
CLI makes before it knows the version, unversioned (project/urls.py)."""

from django.urls import path, re_path

from images import dockerapi as images_api

from . import system

app_name = "docker"

urlpatterns = [
    path("_ping", system.ping, name="ping"),
    path("version", system.version, name="version"),
    path("info", system.info, name="info"),
    path("auth", images_api.auth, name="auth"),
    # Images. Names may hold slashes and colons (127.0.0.1:5000/team/app:v2), so the fixed
    # paths come first and the name patterns end with the action.
    path("images/json", images_api.image_list, name="image_list"),
    path("images/create", images_api.image_create, name="image_create"),
    path("images/search", images_api.image_search, name="image_search"),
    path("images/prune", images_api.image_prune, name="image_prune"),
    path("images/load", images_api.image_load, name="image_load"),
    path("images/get", images_api.image_save, name="image_save_many"),
    re_path(r"^images/(?P<name>.+)/get$", images_api.image_save, name="image_save"),
    re_path(r"^images/(?P<name>.+)/json$", images_api.image_inspect, name="image_inspect"),
    re_path(r"^images/(?P<name>.+)/history$", images_api.image_history, name="image_history"),
    re_path(r"^images/(?P<name>.+)/tag$", images_api.image_tag, name="image_tag"),
    re_path(r"^images/(?P<name>.+)/push$", images_api.image_push, name="image_push"),
    re_path(r"^images/(?P<name>[^/].*)$", images_api.image_delete, name="image_delete"),
]
