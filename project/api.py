"""Berth's own REST API under /api/: what has no Docker equivalent (jobs, tokens)."""

from django.http import JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_GET

from .models import Job


def job_to_dict(job: Job, *, events: bool = False) -> dict:
    """A job as JSON; with ``events``, its whole log."""
    data = {
        "id": job.pk,
        "kind": job.kind,
        "status": job.status,
        "target": job.target,
        "user": job.user.username if job.user else None,
        "params": job.params,
        "progress": job.progress,
        "result": job.result,
        "error": job.error,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }
    if events:
        data["events"] = [{"seq": e.seq, "time": e.time.isoformat(), **e.data} for e in job.events.all()]
    return data


@require_GET
def job_list(request):
    """``GET /api/jobs/``: the newest jobs (``?status=``, ``?kind=`` filter)."""
    jobs = Job.objects.select_related("user")
    for field in ("status", "kind"):
        if value := request.GET.get(field):
            jobs = jobs.filter(**{field: value})
    return JsonResponse({"results": [job_to_dict(j) for j in jobs[:200]]})


@require_GET
def job_detail(request, pk: int):
    """``GET /api/jobs/<pk>/``: one job with its whole event log."""
    job = get_object_or_404(Job.objects.select_related("user"), pk=pk)
    return JsonResponse(job_to_dict(job, events=True))
