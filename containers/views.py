"""Pages of the containers app: list (ps -a), run form, container page with its tabs, actions."""

import json

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.http import Http404, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from runtime import containerfs
from runtime.errors import EngineError, NotFound

from . import services
from .forms import CommitForm, ExecForm, RenameForm, RunForm
from .models import Container

ACTIONS = ("start", "stop", "restart", "kill", "pause", "unpause")


def container_list(request):
    """``docker ps`` (``?all=1``: ``docker ps -a``)."""
    show_all = request.GET.get("all", "1") == "1"
    containers = Container.objects.filter(node=settings.NODE_NAME).select_related("image")
    if not show_all:
        containers = containers.filter(state__in=("running", "paused"))
    return render(request, "containers/container_list.html", {"containers": containers, "show_all": show_all})


@permission_required("containers.add_container", raise_exception=True)
def container_run(request):
    """The run form: every option, validated like the Docker API's create; starts it unless asked not to."""
    form = RunForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            container = services.create_container(form.config, start=form.cleaned_data["start"], user=request.user,
                                                   request=request)
        except EngineError as e:
            form.add_error(None, str(e))
        else:
            messages.success(request, f"Container {container.name} {'started' if container.is_active else 'created'}.")
            return redirect(container)
    return render(request, "containers/container_run.html", {"form": form})


def _get(name: str) -> Container:
    try:
        return services.get_container(name)
    except NotFound:
        raise Http404(f"No such container: {name}") from None


def container_detail(request, name: str):
    """Overview, inspect JSON, logs, stats, processes, diff, files, commit, actions."""
    container = _get(name)
    engine = services.engine_containers()
    tab = request.GET.get("tab", "overview")
    context = {"container": container, "tab": tab, "commit_form": CommitForm(), "rename_form": RenameForm(),
               "exec_form": ExecForm(), "public_host": request.get_host().rsplit(":", 1)[0].strip("[]")}
    try:
        inspect = engine.inspect(container.container_id)
    except NotFound:
        raise Http404(f"No such container: {name}") from None
    context["inspect"] = inspect
    if tab == "inspect":
        context["inspect_json"] = json.dumps(inspect, indent=2)
    elif tab == "processes" and container.state == "running":
        context["top"] = engine.top(container.container_id, "-ef")
    elif tab == "diff":
        context["changes"] = containerfs.diff(engine, container.container_id)
    elif tab == "files":
        context.update(_files_context(engine, container, request.GET.get("path") or "/"))
    return render(request, "containers/container_detail.html", context)


def _files_context(engine, container, path: str) -> dict:
    try:
        entries = containerfs.list_dir(engine, container.container_id, path)
        error = None
    except EngineError as e:
        entries, error = [], str(e)
    parent = path.rstrip("/").rsplit("/", 1)[0] or "/"
    return {"path": path, "entries": entries, "files_error": error, "parent": parent}


@require_POST
def container_action(request, name: str, action: str):
    """start / stop / restart / kill / pause / unpause (operators and admins)."""
    if action not in ACTIONS:
        raise Http404(action)
    if not request.user.has_perm("containers.operate_container"):
        messages.error(request, "You may not change containers.")
        return redirect("containers:container_detail", name)
    container = _get(name)
    kwargs = {"signal": request.POST.get("signal") or "KILL"} if action == "kill" else {}
    try:
        services.container_action(container, action, request=request, **kwargs)
        messages.success(request, f"{action.capitalize()}: {container.name}")
    except EngineError as e:
        messages.error(request, f"Cannot {action} {container.name}: {e}")
    return redirect("containers:container_detail", container.name)


@require_POST
@permission_required("containers.delete_container", raise_exception=True)
def container_remove(request, name: str):
    container = _get(name)
    try:
        services.container_action(container, "remove", request=request, force=request.POST.get("force") == "on",
                                  volumes=request.POST.get("volumes") == "on")
    except EngineError as e:
        messages.error(request, f"Cannot remove {container.name}: {e}")
        return redirect("containers:container_detail", container.name)
    messages.success(request, f"Removed {container.name}")
    return redirect("containers:container_list")


@require_POST
@permission_required("containers.change_container", raise_exception=True)
def container_rename(request, name: str):
    container = _get(name)
    form = RenameForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Cannot rename: {form.errors['name'][0]}")
        return redirect("containers:container_detail", container.name)
    try:
        services.container_action(container, "rename", request=request, new_name=form.cleaned_data["name"])
    except EngineError as e:
        messages.error(request, f"Cannot rename {container.name}: {e}")
        return redirect("containers:container_detail", container.name)
    return redirect("containers:container_detail", form.cleaned_data["name"])


@require_POST
@permission_required("images.add_image", raise_exception=True)
def container_commit(request, name: str):
    container = _get(name)
    form = CommitForm(request.POST)
    form.is_valid()
    data = form.cleaned_data
    try:
        image_id = services.commit(container.container_id, reference=data.get("reference", ""),
                                   changes=[c for c in data.get("changes", "").splitlines() if c.strip()],
                                   message=data.get("message", ""), author=data.get("author", ""), request=request)
    except EngineError as e:
        messages.error(request, f"Cannot commit {container.name}: {e}")
        return redirect("containers:container_detail", container.name)
    messages.success(request, f"Committed {container.name} as {image_id[:19]}")
    return redirect("images:image_detail", image_id[7:19])


def container_download(request, name: str):
    """Download a file or folder of the container as a tar (``docker cp CTR:path -``)."""
    container = _get(name)
    path = request.GET.get("path") or "/"
    engine = services.engine_containers()
    try:
        containerfs.stat_path(engine, container.container_id, path)
    except EngineError as e:
        raise Http404(str(e)) from None
    response = StreamingHttpResponse(containerfs.copy_out(engine, container.container_id, path),
                                     content_type="application/x-tar")
    filename = (path.rstrip("/").rsplit("/", 1)[-1] or "root") + ".tar"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@require_POST
@permission_required("containers.change_container", raise_exception=True)
def container_upload(request, name: str):
    """Upload a file into a folder of the container (``docker cp file CTR:path``)."""
    container = _get(name)
    path = request.POST.get("path") or "/"
    upload = request.FILES.get("file")
    if upload is None:
        messages.error(request, "Choose a file to upload.")
    else:
        try:
            services.upload_file(container.container_id, path, upload, request=request)
            messages.success(request, f"Uploaded {upload.name} to {path}")
        except EngineError as e:
            messages.error(request, f"Cannot upload: {e}")
    return redirect(f"{container.get_absolute_url()}?tab=files&path={path}")


@require_POST
def container_exec(request, name: str):
    """Run one command in the container and show its output and exit code."""
    container = _get(name)
    if not request.user.has_perm("containers.exec_container"):
        messages.error(request, "You may not exec into containers.")
        return redirect("containers:container_detail", container.name)
    form = ExecForm(request.POST)
    result = None
    if form.is_valid():
        try:
            result = services.exec_run(container, form.cleaned_data["command"], user=form.cleaned_data["user"],
                                       workdir=form.cleaned_data["workdir"], request=request)
        except EngineError as e:
            form.add_error(None, str(e))
    inspect = services.engine_containers().inspect(container.container_id)
    return render(request, "containers/container_detail.html", {
        "container": container, "tab": "exec", "exec_form": form, "exec_result": result, "inspect": inspect,
    })


def container_terminal(request, name: str):
    """The browser terminal: exec a shell (or a command) or attach to the container's TTY."""
    container = _get(name)
    if not request.user.has_perm("containers.exec_container"):
        messages.error(request, "Only operators and admins may open a terminal.")
        return redirect(container)
    mode = request.GET.get("mode", "exec")
    if mode not in ("exec", "attach"):
        raise Http404(mode)
    return render(request, "containers/container_terminal.html", {
        "container": container, "mode": mode, "cmd": request.GET.get("cmd", ""),
        "user_name": request.GET.get("user", ""), "workdir": request.GET.get("workdir", ""),
        "readonly": request.GET.get("readonly") == "1",
    })



#
# Networks
#

def network_list(request):
    """``docker network ls``, and the create form."""
    from .forms import NetworkForm
    from .models import Network

    form = NetworkForm(request.POST or None)
    if request.method == "POST":
        if not request.user.has_perm("containers.add_container"):
            messages.error(request, "You may not create networks.")
        elif form.is_valid():
            data = form.cleaned_data
            try:
                services.network_action("create", data["name"], data["subnet"] or None, data["gateway"] or None,
                                        data["internal"], {}, request=request)
                messages.success(request, f"Network {data['name']} created.")
                return redirect("networks:network_detail", data["name"])
            except EngineError as e:
                form.add_error(None, str(e))
    networks = Network.objects.filter(node=settings.NODE_NAME)
    return render(request, "containers/network_list.html", {"networks": networks, "form": form})


def network_detail(request, name: str):
    """A network: its subnet, gateway and containers with their addresses."""
    from .models import Network

    try:
        doc = services.get_engine().networks.get(name)
    except NotFound:
        raise Http404(f"No such network: {name}") from None
    network = Network.objects.filter(node=settings.NODE_NAME, name=doc["Name"]).first()
    members = sorted(doc.get("Containers", {}).values(), key=lambda c: c.get("Name", ""))
    return render(request, "containers/network_detail.html", {"doc": doc, "network": network, "members": members})


@require_POST
@permission_required("containers.delete_container", raise_exception=True)
def network_remove(request, name: str):
    try:
        services.network_action("remove", name, request=request)
        messages.success(request, f"Network {name} removed.")
    except EngineError as e:
        messages.error(request, f"Cannot remove {name}: {e}")
        return redirect("networks:network_detail", name)
    return redirect("networks:network_list")
