"""The images part of the Docker Engine API: create (pull), list, inspect, history, tag, rmi, prune, search."""

import base64
import json
import os
import time

from django.http import FileResponse, HttpResponse

from project.choices import TERMINAL_JOB_STATES
from project.models import Job

from project.dockerapi.base import (
    ApiError,
    docker_endpoint,
    json_body,
    json_response,
    query_bool,
    query_filters,
    require_perm,
)
from project.dockerapi.streams import job_response
from project.engine import get_engine
from runtime.errors import Unauthorized

from . import services


SAVE_TIMEOUT = 3600


def wait_for_job(job_id: int, timeout: float = SAVE_TIMEOUT) -> Job:
    """Wait (in this request's thread) until the job ends; a job still running after ``timeout`` is a 504."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = Job.objects.get(pk=job_id)
        if job.status in TERMINAL_JOB_STATES:
            return job
        time.sleep(0.1)
    raise ApiError(f"job {job_id} did not finish within {timeout:.0f}s", 504)


class DeletingFileResponse(FileResponse):
    """Streams a staged file and deletes it once sent (or abandoned)."""

    def __init__(self, path: str, **kwargs):
        self._staged_path = path
        super().__init__(open(path, "rb"), **kwargs)

    def close(self):
        super().close()
        try:
            os.unlink(self._staged_path)
        except FileNotFoundError:
            pass


def registry_auth(request) -> tuple[str, str] | None:
    """Credentials from the X-Registry-Auth header the docker CLI sends (base64url JSON)."""
    header = request.headers.get("X-Registry-Auth")
    if not header:
        return None
    try:
        padded = header + "=" * (-len(header) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded))
    except ValueError:
        return None
    if isinstance(data, dict) and data.get("username"):
        return data["username"], data.get("password", "")
    return None


@docker_endpoint("POST")
def image_create(request):
    """``POST /images/create?fromImage=busybox&tag=latest``: pull, streaming Docker's progress JSON."""
    require_perm(request, "images.add_image")
    from_image = request.GET.get("fromImage", "")
    if request.GET.get("fromSrc"):
        return _image_import(request)
    if not from_image:
        raise ApiError("fromImage is required")
    tag = request.GET.get("tag", "")
    reference = from_image
    if tag:
        reference += ("@" if tag.startswith("sha256:") else ":") + tag
    job = services.request_pull(reference, request.user, request, credentials=registry_auth(request))
    return job_response(job)


def _image_import(request):
    """``POST /images/create?fromSrc=-&repo=&tag=&changes=&message=``: the body is a rootfs tar."""
    if request.GET["fromSrc"] != "-":
        raise ApiError("import from a URL is not supported: send the archive as the body (fromSrc=-)", 501)
    reference = request.GET.get("repo", "")
    if reference and request.GET.get("tag"):
        reference += ":" + request.GET["tag"]
    path = services.stage_upload(request)
    job = services.request_import(path, reference=reference, changes=request.GET.getlist("changes"),
                                  message=request.GET.get("message", ""), user=request.user, request=request)
    return job_response(job, cancel_on_disconnect=False)


@docker_endpoint("POST")
def image_load(request):
    """``POST /images/load``: the body is a ``docker save`` archive or an OCI layout tar."""
    require_perm(request, "images.add_image")
    path = services.stage_upload(request)
    job = services.request_load(path, user=request.user, request=request)
    return job_response(job, cancel_on_disconnect=False)


@docker_endpoint("GET")
def image_save(request, name: str | None = None):
    """``GET /images/{name}/get`` and ``GET /images/get?names=...``: a ``docker save`` tar."""
    names = [name] if name else request.GET.getlist("names")
    if not names:
        raise ApiError("names is required")
    job = services.request_save(names, user=request.user, request=request)
    job = wait_for_job(job.pk)
    if job.status != "succeeded":
        raise ApiError(job.error or f"save {job.status}", 500)
    return DeletingFileResponse(job.result["path"], content_type="application/x-tar")


@docker_endpoint("POST")
def image_push(request, name: str):
    """``POST /images/{name}/push?tag=``: push, streaming Docker's progress JSON (X-Registry-Auth honoured)."""
    require_perm(request, "images.change_image")
    reference = name + (":" + request.GET["tag"] if request.GET.get("tag") else "")
    job = services.request_push(reference, request.user, request, credentials=registry_auth(request))
    return job_response(job)


@docker_endpoint("GET")
def image_list(request):
    """``GET /images/json``: one summary per image, filtered by dangling and reference."""
    filters = query_filters(request)
    dangling = None
    if "dangling" in filters:
        dangling = filters["dangling"][0] in (True, "true", "1")
    references = filters.get("reference") or [None]
    images = get_engine().images
    seen, answer = set(), []
    for pattern in references:
        for record in images.list(dangling=dangling, reference_filter=pattern):
            if record.id not in seen:
                seen.add(record.id)
                answer.append(images.summary(record))
    answer.sort(key=lambda s: s["Created"], reverse=True)
    return json_response(answer)


@docker_endpoint("GET")
def image_inspect(request, name: str):
    return json_response(get_engine().images.inspect(name))


@docker_endpoint("GET")
def image_history(request, name: str):
    return json_response(get_engine().images.history(name))


@docker_endpoint("POST")
def image_tag(request, name: str):
    """``POST /images/{name}/tag?repo=&tag=`` -> 201."""
    require_perm(request, "images.change_image")
    repo = request.GET.get("repo", "")
    if not repo:
        raise ApiError("repository name (repo) is required")
    target = repo + (":" + request.GET["tag"] if request.GET.get("tag") else "")
    services.tag_image(name, target, request.user, request)
    return HttpResponse(status=201)


@docker_endpoint("DELETE")
def image_delete(request, name: str):
    require_perm(request, "images.delete_image")
    return json_response(services.remove_image(name, force=query_bool(request, "force"), user=request.user,
                                               request=request))


@docker_endpoint("POST")
def image_prune(request):
    require_perm(request, "images.delete_image")
    filters = query_filters(request)
    dangling = filters.get("dangling", ["true"])[0] in (True, "true", "1")
    return json_response(services.prune_images(all=not dangling, request=request))


@docker_endpoint("GET")
def image_search(request):
    """``GET /images/search?term=``: Docker Hub's search, or the catalog of a registry named in the term."""
    term = request.GET.get("term", "")
    if not term:
        raise ApiError("term is required")
    try:
        limit = int(request.GET.get("limit") or 25)
    except ValueError:
        raise ApiError("limit must be a number") from None
    results = get_engine().search(term, limit=limit, credentials=registry_auth(request))
    filters = query_filters(request)
    stars = int(filters.get("stars", [0])[0] or 0)
    official = filters.get("is-official", [None])[0]
    answer = [
        {"name": r.name, "description": r.description, "star_count": r.star_count,
         "is_official": r.is_official, "is_automated": r.is_automated}
        for r in results
        if r.star_count >= stars and (official is None or r.is_official == (official in (True, "true")))
    ]
    return json_response(answer)


@docker_endpoint("POST")
def auth(request):
    """``POST /auth`` (docker login): check credentials against the registry; Docker's answer."""
    body = json_body(request)
    registry = body.get("serveraddress") or "docker.io"
    for prefix in ("https://", "http://"):
        registry = registry.removeprefix(prefix)
    registry = registry.split("/", 1)[0]
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = "docker.io"
    if not body.get("username"):
        raise ApiError("username is required")
    try:
        services.login(registry, body["username"], body.get("password", ""), request=request)
    except Unauthorized as e:
        raise ApiError(f"login attempt to {registry} failed: {e}", 401) from None
    return json_response({"Status": "Login Succeeded", "IdentityToken": ""})


#
# Build (the classic builder's API: DOCKER_BUILDKIT=0)
#

def _json_param(request, name: str) -> dict:
    raw = request.GET.get(name)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise ApiError(f"invalid {name}: {raw}") from None
    if not isinstance(value, dict):
        raise ApiError(f"invalid {name}: expected a JSON object")
    return {k: v for k, v in value.items() if v is not None}


@docker_endpoint("POST")
def build(request):
    """``POST /build``: the body is the context tar; the answer streams the build's JSON lines."""
    require_perm(request, "images.add_image")
    if request.GET.get("remote"):
        raise ApiError("builds from a remote context are not supported: send the context as the body", 501)
    path = services.stage_upload(request)
    job = services.request_build(
        path, tags=request.GET.getlist("t"), dockerfile=request.GET.get("dockerfile") or "Dockerfile",
        build_args=_json_param(request, "buildargs"), target=request.GET.get("target", ""),
        no_cache=query_bool(request, "nocache"), pull=query_bool(request, "pull"),
        labels=_json_param(request, "labels"), network_mode=request.GET.get("networkmode") or "",
        user=request.user, request=request)
    return job_response(job)


@docker_endpoint("POST")
def build_prune(request):
    require_perm(request, "images.delete_image")
    return json_response(services.prune_build_cache(request=request))
