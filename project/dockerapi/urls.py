"""Routes of the Docker Engine API. Mounted twice: under ``/v<version>/`` and, for the calls the
CLI makes before it knows the version, unversioned (project/urls.py)."""

from django.urls import path, re_path

from containers import dockerapi as containers_api
from images import dockerapi as images_api

from . import events, hijack, system

app_name = "docker"

urlpatterns = [
    path("_ping", system.ping, name="ping"),
    path("version", system.version, name="version"),
    path("info", system.info, name="info"),
    path("events", events.events, name="events"),
    path("auth", images_api.auth, name="auth"),
    # Images. Names may hold slashes and colons (127.0.0.1:5000/team/app:v2), so the fixed
    # paths come first and the name patterns end with the action.
    path("build", images_api.build, name="build"),
    path("build/prune", images_api.build_prune, name="build_prune"),
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
    # Containers. Ids and names hold no slash.
    path("containers/create", containers_api.container_create, name="container_create"),
    path("containers/json", containers_api.container_list, name="container_list"),
    path("containers/prune", containers_api.container_prune, name="container_prune"),
    path("containers/<str:name>/json", containers_api.container_inspect, name="container_inspect"),
    path("containers/<str:name>/start", containers_api.container_start, name="container_start"),
    path("containers/<str:name>/stop", containers_api.container_stop, name="container_stop"),
    path("containers/<str:name>/restart", containers_api.container_restart, name="container_restart"),
    path("containers/<str:name>/kill", containers_api.container_kill, name="container_kill"),
    path("containers/<str:name>/pause", containers_api.container_pause, name="container_pause"),
    path("containers/<str:name>/unpause", containers_api.container_unpause, name="container_unpause"),
    path("containers/<str:name>/rename", containers_api.container_rename, name="container_rename"),
    path("containers/<str:name>/wait", containers_api.container_wait, name="container_wait"),
    path("containers/<str:name>/logs", containers_api.container_logs, name="container_logs"),
    path("containers/<str:name>/top", containers_api.container_top, name="container_top"),
    path("containers/<str:name>/stats", containers_api.container_stats, name="container_stats"),
    path("containers/<str:name>/changes", containers_api.container_changes, name="container_changes"),
    path("containers/<str:name>/export", containers_api.container_export, name="container_export"),
    path("containers/<str:name>/archive", containers_api.container_archive, name="container_archive"),
    path("containers/<str:name>/exec", containers_api.exec_create, name="exec_create"),
    path("containers/<str:name>/resize", hijack.container_resize, name="container_resize"),
    path("containers/<str:name>", containers_api.container_delete, name="container_delete"),
    path("exec/<str:exec_id>/start", containers_api.exec_start, name="exec_start"),
    path("exec/<str:exec_id>/json", containers_api.exec_inspect, name="exec_inspect"),
    path("exec/<str:exec_id>/resize", hijack.exec_resize, name="exec_resize"),
    path("commit", containers_api.commit, name="commit"),
    # Networks.
    path("networks", containers_api.network_list, name="network_list"),
    path("networks/create", containers_api.network_create, name="network_create"),
    path("networks/prune", containers_api.network_prune, name="network_prune"),
    path("networks/<str:name>/connect", containers_api.network_connect, name="network_connect"),
    path("networks/<str:name>/disconnect", containers_api.network_disconnect, name="network_disconnect"),
    path("networks/<str:name>", containers_api.network_detail, name="network_detail"),
    # Volumes.
    path("volumes", containers_api.volume_list, name="volume_list"),
    path("volumes/create", containers_api.volume_create, name="volume_create"),
    path("volumes/prune", containers_api.volume_prune, name="volume_prune"),
    path("volumes/<str:name>", containers_api.volume_detail, name="volume_detail"),
    # The front listener's internal calls (project/front.py): refused without its secret header,
    # and the front refuses /_berth/ from clients.
    path("_berth/hijack/preflight", hijack.preflight, name="hijack_preflight"),
    path("_berth/hijack/exec-start", hijack.exec_start, name="hijack_exec_start"),
    path("_berth/hijack/exec-finish", hijack.exec_finish, name="hijack_exec_finish"),
    path("_berth/hijack/init-wait", hijack.init_wait, name="hijack_init_wait"),
]
