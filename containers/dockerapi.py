"""The containers part of the Docker Engine API: create, list, inspect, start, stop, restart, kill,
pause, unpause, rename, wait, remove, logs, top, stats, changes, archive (cp), export, exec -d, commit,
prune, and volumes."""

import asyncio
import base64
import json
import struct

from asgiref.sync import sync_to_async
from django.http import HttpResponse, StreamingHttpResponse

from project.dockerapi.base import (
    ApiError,
    docker_endpoint,
    json_body,
    json_response,
    query_bool,
    query_filters,
    query_int,
    require_perm,
)
from project.engine import get_engine
from runtime import containerfs

from . import runoptions, services
from .choices import ContainerStateChoices

STREAM_CODES = {"stdin": 0, "stdout": 1, "stderr": 2}


def engine():
    return get_engine().containers


def frame(stream: str, data: bytes) -> bytes:
    """One frame of Docker's multiplexed stream: stream byte, 3 zero bytes, big-endian length, payload."""
    return struct.pack(">BxxxI", STREAM_CODES[stream], len(data)) + data


#
# Create, list, inspect
#

@docker_endpoint("POST")
def container_create(request):
    """``POST /containers/create?name=``: 201 {"Id", "Warnings"}; 404 "No such image" lets the CLI pull."""
    require_perm(request, "containers.add_container")
    config = runoptions.from_docker(json_body(request), request.GET.get("name", ""))
    container = services.create_container(config, user=request.user, request=request, read=False)
    return json_response({"Id": container.container_id, "Warnings": []}, status=201)


@docker_endpoint("GET")
def container_list(request):
    """``GET /containers/json?all=&limit=&filters=``."""
    wanted = query_filters(request)
    store = engine()
    records = []
    # Shared records (not copied): this view only reads them.
    for record in store.list(all=query_bool(request, "all") or bool(wanted.get("status")), shared=True):
        if "name" in wanted and not any(n in record.name for n in wanted["name"]):
            continue
        if "id" in wanted and not any(record.id.startswith(i) for i in wanted["id"]):
            continue
        if "label" in wanted and not all(_label_matches(record.config.labels, lbl) for lbl in wanted["label"]):
            continue
        if "ancestor" in wanted and not any(a in (record.image_ref, record.image_id) for a in wanted["ancestor"]):
            continue
        records.append(record)
    answer = [s for s in store.summaries(records) if "status" not in wanted or s["State"] in wanted["status"]]
    answer.sort(key=lambda s: s["Created"], reverse=True)
    limit = query_int(request, "limit")
    if limit and limit > 0:
        answer = answer[:limit]
    return json_response(answer)


def _label_matches(labels: dict, expression: str) -> bool:
    key, sep, value = expression.partition("=")
    return key in labels and (not sep or labels[key] == value)


@docker_endpoint("GET")
def container_inspect(request, name: str):
    return json_response(engine().inspect(name))


#
# Lifecycle
#

def _action(request, name: str, action: str, record=None, **kwargs) -> HttpResponse:
    require_perm(request, "containers.operate_container" if action != "remove" else "containers.delete_container")
    # The row for the audit log of a start is read beside the answer (it stays); the others' before
    # (a stop or kill of a --rm container, a removal, take it away).
    if action in ("start", "unpause"):
        target = (record or engine().get(name)).id
    else:
        target = services.get_container(name)
    services.container_action(target, action, request=request, **kwargs)
    return HttpResponse(status=204)


@docker_endpoint("POST")
def container_start(request, name: str):
    record = engine().get(name)
    if record.state.value in (ContainerStateChoices.RUNNING, ContainerStateChoices.PAUSED):
        return HttpResponse(status=304)
    return _action(request, name, "start", record)


@docker_endpoint("POST")
def container_stop(request, name: str):
    record = engine().get(name)
    if record.state.value not in (ContainerStateChoices.RUNNING, ContainerStateChoices.PAUSED):
        return HttpResponse(status=304)
    return _action(request, name, "stop", timeout=query_int(request, "t"))


@docker_endpoint("POST")
def container_restart(request, name: str):
    return _action(request, name, "restart", timeout=query_int(request, "t"))


@docker_endpoint("POST")
def container_kill(request, name: str):
    record = engine().get(name)
    if record.state.value != ContainerStateChoices.RUNNING:
        raise ApiError(f"Cannot kill container: {name}: Container {record.id} is not running", 409)
    return _action(request, name, "kill", signal=request.GET.get("signal") or "KILL")


@docker_endpoint("POST")
def container_pause(request, name: str):
    return _action(request, name, "pause")


@docker_endpoint("POST")
def container_unpause(request, name: str):
    return _action(request, name, "unpause")


@docker_endpoint("POST")
def container_rename(request, name: str):
    new_name = runoptions.check_name(request.GET.get("name", ""))
    if not new_name:
        raise ApiError("name is required")
    return _action(request, name, "rename", new_name=new_name)


@docker_endpoint("DELETE")
def container_delete(request, name: str):
    return _action(request, name, "remove", force=query_bool(request, "force"), volumes=query_bool(request, "v"))


@docker_endpoint("POST")
def container_wait(request, name: str):
    """``POST /containers/{id}/wait``: the answer's headers go out at once, the body when it exits."""
    record = engine().get(name)
    condition = request.GET.get("condition") or "not-running"

    async def body():
        # An empty first chunk makes Daphne send the headers now (docker run waits for them).
        yield b""
        code = await sync_to_async(_wait, thread_sensitive=False)(record.id, condition)
        yield json.dumps({"StatusCode": code, "Error": None}).encode() + b"\n"

    return StreamingHttpResponse(body(), content_type="application/json")


def _wait(container_id: str, condition: str) -> int:
    return engine().wait(container_id, condition=condition, sync=False)  # the worker records the exit


#
# Reads: logs, top, stats, changes, export, archive
#

@docker_endpoint("GET")
def container_logs(request, name: str):
    """``GET /containers/{id}/logs``: frames without a TTY, raw bytes with one; follow streams."""
    record = engine().get(name)
    stdout, stderr = query_bool(request, "stdout"), query_bool(request, "stderr")
    if not stdout and not stderr:
        raise ApiError("Bad parameters: you must choose at least one stream")
    tail = request.GET.get("tail", "all")
    tail = None if tail in ("all", "", None) else int(tail)
    lines = engine().logs(record.id, stdout=stdout, stderr=stderr, timestamps=query_bool(request, "timestamps"),
                          tail=tail, since=query_int(request, "since"), until=query_int(request, "until"),
                          follow=query_bool(request, "follow"))
    tty = record.config.tty

    def body():
        for stream, data, stamp in lines:
            chunk = (stamp.encode() + b" " + data) if query_bool(request, "timestamps") and stamp else data
            yield chunk if tty else frame(stream, chunk)

    content_type = "application/vnd.docker.raw-stream" if tty else "application/vnd.docker.multiplexed-stream"
    return StreamingHttpResponse(body(), content_type=content_type)


@docker_endpoint("GET")
def container_top(request, name: str):
    return json_response(engine().top(name, request.GET.get("ps_args") or "-ef"))


@docker_endpoint("GET")
def container_stats(request, name: str):
    record = engine().get(name)
    if not query_bool(request, "stream", default=True) or query_bool(request, "one-shot"):
        return json_response(engine().stats(record.id))

    async def body():
        while True:
            stats = await sync_to_async(engine().stats, thread_sensitive=False)(record.id)
            yield (json.dumps(stats) + "\n").encode()
            await asyncio.sleep(1)

    return StreamingHttpResponse(body(), content_type="application/json")


@docker_endpoint("GET")
def container_changes(request, name: str):
    return json_response(containerfs.diff(engine(), name))


@docker_endpoint("GET")
def container_export(request, name: str):
    record = engine().get(name)
    return StreamingHttpResponse(containerfs.export(engine(), record.id), content_type="application/x-tar")


@docker_endpoint("GET", "PUT")
def container_archive(request, name: str):
    """``docker cp``: GET/HEAD a tar of a path (stat in X-Docker-Container-Path-Stat); PUT extracts one."""
    path = request.GET.get("path")
    if not path:
        raise ApiError("path is required")
    record = engine().get(name)
    if request.method == "PUT":
        require_perm(request, "containers.change_container")
        services.copy_in(record.id, path, request, no_overwrite_dir_non_dir=query_bool(request, "noOverwriteDirNonDir"),
                         request=request)
        return HttpResponse(status=200)
    stat = containerfs.stat_path(engine(), record.id, path)
    header = base64.b64encode(json.dumps(stat).encode()).decode()
    if request.method == "HEAD":
        response = HttpResponse(status=200)
    else:
        response = StreamingHttpResponse(containerfs.copy_out(engine(), record.id, path), content_type="application/x-tar")
    response["X-Docker-Container-Path-Stat"] = header
    return response


#
# Exec (detached; the hijacked exec streams come with the terminal issue), commit, prune
#

@docker_endpoint("POST")
def exec_create(request, name: str):
    require_perm(request, "containers.exec_container")
    body = json_body(request)
    if not body.get("Cmd"):
        raise ApiError("No exec command specified")
    record = engine().get(name)
    if record.state.value != ContainerStateChoices.RUNNING:
        raise ApiError(f"Container {record.id} is not running", 409)
    exec_id = services.exec_create(record.id, body, user=request.user)
    return json_response({"Id": exec_id}, status=201)


@docker_endpoint("POST")
def exec_start(request, exec_id: str):
    body = json_body(request)
    if not body.get("Detach"):
        raise ApiError("attached exec needs the connection upgrade (docker exec without -d): not served yet", 501)
    services.exec_start_detached(exec_id)
    return HttpResponse(status=200)


@docker_endpoint("GET")
def exec_inspect(request, exec_id: str):
    return json_response(services.exec_inspect(exec_id))


@docker_endpoint("POST")
def commit(request):
    """``POST /commit?container=&repo=&tag=&comment=&author=&changes=&pause=``: 201 {"Id"}."""
    require_perm(request, "images.add_image")
    name = request.GET.get("container")
    if not name:
        raise ApiError("container is required")
    reference = request.GET.get("repo", "")
    if reference and request.GET.get("tag"):
        reference += ":" + request.GET["tag"]
    image_id = services.commit(engine().get(name).id, reference=reference, changes=request.GET.getlist("changes"),
                               message=request.GET.get("comment", ""), author=request.GET.get("author", ""),
                               pause=query_bool(request, "pause", True), request=request)
    return json_response({"Id": image_id}, status=201)


@docker_endpoint("POST")
def container_prune(request):
    require_perm(request, "containers.delete_container")
    return json_response(services.prune(request=request))



#
# Volumes
#

@docker_endpoint("GET")
def volume_list(request):
    volumes = services.volume_store().list(query_filters(request), in_use=engine().volume_users)
    return json_response({"Volumes": volumes, "Warnings": []})


@docker_endpoint("POST")
def volume_create(request):
    require_perm(request, "containers.add_volume")
    body = json_body(request)
    if body.get("Driver") not in (None, "", "local"):
        raise ApiError(f"volume driver {body['Driver']!r} is not supported: only local", 400)
    return json_response(services.volume_create(body.get("Name"), body.get("Labels"), request=request), status=201)


@docker_endpoint("GET", "DELETE")
def volume_detail(request, name: str):
    if request.method == "DELETE":
        require_perm(request, "containers.delete_volume")
        services.volume_remove(name, force=query_bool(request, "force"), request=request)
        return HttpResponse(status=204)
    return json_response(services.volume_store().get(name))


@docker_endpoint("POST")
def volume_prune(request):
    require_perm(request, "containers.delete_volume")
    return json_response(services.volume_prune(query_filters(request), request=request))


#
# Networks (docker network create / ls / inspect / rm / connect / disconnect / prune)
#

def networks():
    return get_engine().networks


@docker_endpoint("GET")
def network_list(request):
    return json_response(networks().list(query_filters(request)))


@docker_endpoint("POST")
def network_create(request):
    """``POST /networks/create``: 201 {"Id", "Warning"}."""
    require_perm(request, "containers.add_container")
    body = json_body(request)
    if not body.get("Name"):
        raise ApiError("network name is required")
    if body.get("Driver") not in (None, "", "bridge"):
        raise ApiError(f"network driver {body['Driver']!r} is not supported: only bridge", 400)
    config = ((body.get("IPAM") or {}).get("Config") or [{}])[0] or {}
    network = services.network_action("create", body["Name"], config.get("Subnet"), config.get("Gateway"),
                                      bool(body.get("Internal")), body.get("Labels") or {}, request=request)
    return json_response({"Id": network["Id"], "Warning": ""}, status=201)


@docker_endpoint("GET", "DELETE")
def network_detail(request, name: str):
    if request.method == "DELETE":
        require_perm(request, "containers.delete_container")
        services.network_action("remove", name, request=request)
        return HttpResponse(status=204)
    return json_response(networks().get(name))


@docker_endpoint("POST")
def network_connect(request, name: str):
    require_perm(request, "containers.change_container")
    body = json_body(request)
    endpoint = body.get("EndpointConfig") or {}
    aliases = endpoint.get("Aliases") or []
    ipv4 = (endpoint.get("IPAMConfig") or {}).get("IPv4Address") or ""
    services.network_action("connect", name, body.get("Container", ""), list(aliases), ipv4, request=request)
    return HttpResponse(status=200)


@docker_endpoint("POST")
def network_disconnect(request, name: str):
    require_perm(request, "containers.change_container")
    body = json_body(request)
    services.network_action("disconnect", name, body.get("Container", ""), bool(body.get("Force")), request=request)
    return HttpResponse(status=200)


@docker_endpoint("POST")
def network_prune(request):
    require_perm(request, "containers.delete_container")
    return json_response(services.network_action("prune", query_filters(request), request=request))
