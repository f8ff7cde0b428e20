"""Pages of the project app: the dashboard and the user's API tokens."""

import os

from django.contrib import messages
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from . import audit, jobs
from .engine import system_info
from .dockerapi.system import engine_counts
from .forms import ApiTokenForm
from .models import ApiToken, Job


def dashboard(request):
    """The facts of ``docker info`` and the live health of each part (filled in by /ws/events)."""
    context = {
        "facts": system_info(),
        "counts": engine_counts(),
        "recent_jobs": Job.objects.select_related("user")[:5],
    }
    return render(request, "project/dashboard.html", context)


def token_list(request):
    """List the user's tokens; the form creates a new one and shows its clear text once."""
    form = ApiTokenForm()
    new_token = None
    if request.method == "POST":
        form = ApiTokenForm(request.POST)
        if form.is_valid():
            token, new_token = ApiToken.objects.create_token(request.user, form.cleaned_data["description"])
            audit.record(request, "token.create", token)
            form = ApiTokenForm()
    tokens = ApiToken.objects.filter(user=request.user)
    return render(request, "project/token_list.html", {"tokens": tokens, "form": form, "new_token": new_token})


@require_POST
def token_revoke(request, pk: int):
    """Revoke one of the user's own tokens."""
    token = get_object_or_404(ApiToken, pk=pk, user=request.user)
    token.revoke()
    audit.record(request, "token.revoke", token)
    messages.success(request, f"Token {token.prefix}… revoked.")
    return redirect("token_list")


def job_list(request):
    """Every long operation, newest first."""
    jobs = Job.objects.select_related("user")
    status = request.GET.get("status")
    if status:
        jobs = jobs.filter(status=status)
    return render(request, "project/job_list.html", {"jobs": jobs[:200], "status": status})


def job_detail(request, pk: int):
    """One job with its whole log; new events arrive live over /ws/jobs/<pk>."""
    job = get_object_or_404(Job.objects.select_related("user"), pk=pk)
    return render(request, "project/job_detail.html", {"job": job, "events": job.events.all()})


@require_POST
def job_cancel(request, pk: int):
    """Cancel a pending or running job (operators and admins)."""
    job = get_object_or_404(Job, pk=pk)
    if not request.user.has_perm("project.cancel_job"):
        messages.error(request, "You may not cancel jobs.")
    elif jobs.request_cancel(job):
        audit.record(request, "job.cancel", job)
        messages.success(request, f"Cancelling job #{job.pk}.")
    else:
        messages.error(request, f"Job #{job.pk} has already ended.")
    return redirect("job_detail", job.pk)


def job_download(request, pk: int):
    """The archive a save job wrote (kept under DATA_DIR/exports for a day)."""
    job = get_object_or_404(Job, pk=pk, kind="save", status="succeeded")
    path = job.result.get("path")
    if not path or not os.path.exists(path):
        raise Http404("the archive of this job was already downloaded or removed")
    name = "-".join(job.params.get("names", ["image"])).replace("/", "_").replace(":", "_")[:100] + ".tar"
    return FileResponse(open(path, "rb"), as_attachment=True, filename=name, content_type="application/x-tar")
