"""Pages of the images app: list, detail, pull, tag, remove. Views parse, authorise, call a service."""

import dataclasses
import io
import json
import tarfile
import time

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.db.models import Q
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from project.engine import get_engine
from runtime.engine import split_search_term
from runtime.errors import EngineError, NotFound

from . import services
from .forms import BuildForm, ImportForm, LoadForm, PullForm, RegistryForm, SearchForm, TagForm
from .models import Image, Registry


def image_list(request):
    """``docker images``: filter by name (substring) and dangling."""
    images = Image.objects.filter(node=settings.NODE_NAME).prefetch_related("tags").select_related("job")
    q = request.GET.get("q", "").strip()
    if q:
        images = images.filter(Q(tags__name__icontains=q) | Q(digest__icontains=q)).distinct()
    dangling = request.GET.get("dangling")
    if dangling == "true":
        images = images.filter(tags__isnull=True)
    elif dangling == "false":
        images = images.filter(tags__isnull=False).distinct()
    rows = []
    for image in images:
        tags = list(image.tags.all()) or [None]
        for tag in tags:
            rows.append({"image": image, "tag": tag})
    return render(request, "images/image_list.html", {
        "rows": rows, "q": q, "dangling": dangling, "pull_form": PullForm(), "import_form": ImportForm(),
        "load_form": LoadForm(), "search_form": SearchForm(),
    })


def image_search(request):
    """``docker search``: results from Docker Hub or a registry's catalog, each with a Pull button."""
    form = SearchForm(request.GET or None)
    results, error = [], None
    if form.is_valid():
        term = form.cleaned_data["term"]
        registry, _ = split_search_term(term)
        try:
            found = get_engine().search(term, limit=50)
        except EngineError as e:
            found, error = [], str(e)
        # What the Pull button pulls: a registry's results need its host in front.
        results = [{"reference": f"{registry}/{r.name}" if registry else r.name, **dataclasses.asdict(r)}
                   for r in found]
    return render(request, "images/image_search.html", {"form": form, "results": results, "error": error})


@require_POST
@permission_required("images.add_image", raise_exception=True)
def image_import(request):
    """``docker import``: an uploaded rootfs tar becomes an image (a job)."""
    form = ImportForm(request.POST, request.FILES)
    if not form.is_valid():
        messages.error(request, "Cannot import: " + "; ".join(e for errs in form.errors.values() for e in errs))
        return redirect("images:image_list")
    try:
        path = services.stage_upload(form.cleaned_data["archive"])
        job = services.request_import(path, reference=form.cleaned_data["reference"],
                                      changes=form.cleaned_data["changes"], message=form.cleaned_data["message"],
                                      user=request.user, request=request)
    except EngineError as e:
        messages.error(request, f"Cannot import: {e}")
        return redirect("images:image_list")
    return redirect("job_detail", job.pk)


@require_POST
@permission_required("images.add_image", raise_exception=True)
def image_load(request):
    """``docker load``: an uploaded archive's images are verified and added (a job)."""
    form = LoadForm(request.POST, request.FILES)
    if not form.is_valid():
        messages.error(request, "Cannot load: " + "; ".join(e for errs in form.errors.values() for e in errs))
        return redirect("images:image_list")
    try:
        job = services.request_load(services.stage_upload(form.cleaned_data["archive"]), user=request.user,
                                    request=request)
    except EngineError as e:
        messages.error(request, f"Cannot load: {e}")
        return redirect("images:image_list")
    return redirect("job_detail", job.pk)


@require_POST
@permission_required("images.change_image", raise_exception=True)
def image_push(request, name: str):
    """``docker push TAG``: a job with one progress bar per layer."""
    image = _get_image(name)
    tag = request.POST.get("tag", "")
    try:
        job = services.request_push(tag, request.user, request)
    except EngineError as e:
        messages.error(request, f"Cannot push {tag}: {e}")
        return redirect("images:image_detail", image.short_id)
    return redirect("job_detail", job.pk)


def registry_list(request):
    """Registries Berth keeps credentials for; adding one checks the credentials first (docker login)."""
    form = RegistryForm(request.POST or None)
    if request.method == "POST":
        if not request.user.has_perm("images.add_registry"):
            messages.error(request, "You may not add registries.")
        elif form.is_valid():
            data = form.cleaned_data
            try:
                if data["username"]:
                    services.login(data["host"], data["username"], data["password"], save=True, request=request)
                else:
                    Registry.objects.update_or_create(host=data["host"], defaults={"insecure": data["insecure"]})
                Registry.objects.filter(host=data["host"]).update(insecure=data["insecure"])
                messages.success(request, f"Login Succeeded: {data['host']}")
                return redirect("images:registry_list")
            except EngineError as e:
                messages.error(request, f"Cannot log in to {data['host']}: {e}")
    return render(request, "images/registry_list.html", {"registries": Registry.objects.all(), "form": form})


@require_POST
@permission_required("images.delete_registry", raise_exception=True)
def registry_remove(request, pk: int):
    Registry.objects.filter(pk=pk).delete()
    messages.success(request, "Registry credentials removed.")
    return redirect("images:registry_list")


@require_POST
def image_save(request, name: str):
    """``docker save``: a job writes the archive; its page offers the download."""
    image = _get_image(name)
    names = [request.POST["tag"]] if request.POST.get("tag") else [image.digest]
    try:
        job = services.request_save(names, user=request.user, request=request)
    except EngineError as e:
        messages.error(request, f"Cannot save: {e}")
        return redirect("images:image_detail", image.short_id)
    return redirect("job_detail", job.pk)


def _get_image(name: str) -> Image:
    """The image row for a short id, full id or name; 404 when the engine does not know it."""
    try:
        record = get_engine().images.resolve(name)
    except (NotFound, EngineError):
        raise Http404(f"no such image: {name}") from None
    image = Image.objects.filter(digest=record.id).first()
    if image is None:
        image = services.sync_image(record)
    return image


def image_detail(request, name: str):
    """An image: tags, layers, history, inspect JSON, and the actions."""
    image = _get_image(name)
    engine = get_engine()
    inspect = engine.images.inspect(image.digest)
    history = engine.images.history(image.digest)
    layers = list(image.image_layers.select_related("layer").order_by("position"))
    # The config's history steps that made a layer are, in order, the image's layers.
    steps = [h for h in (image.config.get("history") or []) if not h.get("empty_layer")]
    for link, step in zip(layers, steps):
        link.created_by = step.get("created_by", "")
    layers.reverse()
    return render(request, "images/image_detail.html", {
        "image": image, "tags": image.tags.all(), "layers": layers, "history": history,
        "inspect_json": json.dumps(inspect, indent=2), "tag_form": TagForm(),
    })


@require_POST
@permission_required("images.add_image", raise_exception=True)
def image_pull(request):
    form = PullForm(request.POST)
    if not form.is_valid():
        for error in form.errors.get("reference", []):
            messages.error(request, f"Cannot pull: {error}")
        return redirect("images:image_list")
    job = services.request_pull(form.cleaned_data["reference"], request.user, request)
    messages.success(request, f"Queued job #{job.pk} to pull {job.target}")
    return redirect("job_detail", job.pk)


@require_POST
@permission_required("images.change_image", raise_exception=True)
def image_tag(request, name: str):
    image = _get_image(name)
    form = TagForm(request.POST)
    if form.is_valid():
        try:
            services.tag_image(image.digest, form.cleaned_data["target"], request.user, request)
            messages.success(request, f"Tagged {image.short_id} as {form.cleaned_data['target']}")
        except EngineError as e:
            messages.error(request, f"Cannot tag: {e}")
    else:
        messages.error(request, f"Cannot tag: {form.errors['target'][0]}")
    return redirect("images:image_detail", image.short_id)


@require_POST
@permission_required("images.delete_image", raise_exception=True)
def image_remove(request, name: str):
    """``docker rmi [-f] NAME``: by tag it untags (and deletes when it was the last tag)."""
    force = request.POST.get("force") == "on"
    try:
        answer = services.remove_image(name, force=force, user=request.user, request=request)
    except EngineError as e:
        messages.error(request, f"Cannot remove {name}: {e}")
        return redirect(request.POST.get("next") or "images:image_list")
    messages.success(request, "; ".join(f"{k} {v}" for entry in answer for k, v in entry.items()))
    return redirect("images:image_list")


@permission_required("images.add_image", raise_exception=True)
def image_build(request):
    """``docker build``: write or paste a Dockerfile, or upload a context; then watch the build's job."""
    form = BuildForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            path = _build_context(data)
            job = services.request_build(path, tags=data["tags"].split(), dockerfile=data["dockerfile"] or "Dockerfile",
                                         build_args=data["build_args_dict"], target=data["target"],
                                         no_cache=data["no_cache"], user=request.user, request=request)
        except EngineError as e:
            form.add_error(None, str(e))
        else:
            return redirect("job_detail", job.pk)
    return render(request, "images/image_build.html", {"form": form})


def _build_context(data) -> str:
    """Stage the context tar: the uploaded one, with the typed Dockerfile added (or alone)."""
    text = (data.get("dockerfile_text") or "").replace("\r\n", "\n")
    if data.get("context") is None:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            _add_text(tar, data.get("dockerfile") or "Dockerfile", text, time.time())
        buffer.seek(0)
        return services.stage_upload(buffer)
    path = services.stage_upload(data["context"])
    if text:
        # Append the typed Dockerfile to the uploaded (uncompressed) tar; a compressed one keeps its own.
        try:
            with tarfile.open(path, mode="a") as tar:
                _add_text(tar, data.get("dockerfile") or "Dockerfile", text, time.time())
        except (tarfile.ReadError, OSError):
            pass
    return path


def _add_text(tar, name: str, text: str, mtime: float) -> None:
    content = text.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(content), 0o644, int(mtime)
    tar.addfile(info, io.BytesIO(content))
