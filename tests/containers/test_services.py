"""What the worker does when a container ends (containers/services.py), against real containers:
the exit is recorded once, and --rm removes the container, except in the middle of its restart."""

import json
import os
import shutil
import tempfile

import pytest

from containers import services
from containers.models import Container
from project.engine import get_engine
from runtime.containers import ContainerConfig
from runtime.errors import EngineError, NotFound
from runtime.state import ContainerState as S
from tests.support.starter import import_busybox


@pytest.fixture
def engine(settings):
    # Under /tmp with a short name: conmon's attach socket path must fit in 107 bytes.
    base = tempfile.mkdtemp(prefix="bs-", dir="/tmp")
    settings.RUNTIME_ROOT, settings.RUNTIME_RUN_ROOT = f"{base}/root", f"{base}/run"
    engine = get_engine()
    import_busybox(engine)
    yield engine
    for record in engine.containers.list(all=True):
        engine.containers.remove(record.id, force=True)
    shutil.rmtree(base, ignore_errors=True)


def run_rm(engine, *cmd):
    record = engine.containers.create(ContainerConfig(image="busybox", cmd=list(cmd), auto_remove=True))
    services.sync_container(record)
    engine.containers.start(record.id)
    services.after_start(record.id)
    return record.id


def test_docker_restart_keeps_a_rm_container(db, engine):
    """``docker restart`` of a --rm container stops it and starts it again, as Docker does: the exit
    watcher that sees the stop's exit before the start must not remove it."""
    cid = run_rm(engine, "sleep", "1000")
    engine.containers.stop(cid, timeout=0, restarting=True)  # the first half of restart()
    services.handle_exit(cid)  # the watcher, between the two halves
    assert engine.containers.get(cid).state is S.EXITED
    assert Container.objects.filter(container_id=cid).exists()
    engine.containers.start(cid)  # the second half
    assert services.after_start(cid).state == "running"
    # Through restart() itself, with the watcher's look after it: still there, running.
    engine.containers.restart(cid, timeout=0)
    services.handle_exit(cid)
    assert engine.containers.get(cid).state is S.RUNNING
    # A plain stop is the end of it: --rm removes it.
    engine.containers.stop(cid, timeout=0)
    services.handle_exit(cid)
    with pytest.raises(NotFound):
        engine.containers.get(cid)
    assert not Container.objects.filter(container_id=cid).exists()


def test_a_rm_container_whose_restart_cannot_start_is_removed(db, engine):
    """The start half fails (here its command is gone): the container is removed, as after a failed
    start of a --rm container, rather than left exited for ever."""
    cid = run_rm(engine, "sleep", "1000")
    path = os.path.join(engine.containers.root, cid, "config.json")
    with open(path) as f:
        doc = json.load(f)
    doc["config"]["cmd"], doc["path"], doc["args"] = ["no-such-command"], "no-such-command", []
    with open(path + ".new", "w") as f:
        json.dump(doc, f)
    os.replace(path + ".new", path)
    with pytest.raises(EngineError, match="no-such-command"):
        services.do_action(cid, "restart", timeout=0)
    with pytest.raises(NotFound):
        engine.containers.get(cid)
    assert not Container.objects.filter(container_id=cid).exists()


def test_a_restart_cut_short_by_a_worker_crash_ends_like_a_stop(db, engine):
    """The worker died between the stop and the start of ``docker restart``: the next worker's
    reconcile takes it as stopped, so --rm removes it (rather than an exit nobody acts on)."""
    cid = run_rm(engine, "sleep", "1000")
    engine.containers.stop(cid, timeout=0, restarting=True)
    services.handle_exit(cid)  # the exit watcher meanwhile: a restart's exit, left alone
    assert engine.containers.get(cid).state is S.EXITED
    services.reconcile_containers()
    with pytest.raises(NotFound):
        engine.containers.get(cid)
    assert not Container.objects.filter(container_id=cid).exists()


def test_create_records_the_owner_and_audits_the_new_row(db, engine, django_user_model, settings):
    """The Docker API's create (``read=False``: the row is not read back) still gives the row its
    owner, and the audit log names that row."""
    from django.test import RequestFactory

    settings.CELERY_TASK_ALWAYS_EAGER = True  # the worker's side runs here

    from project.models import AuditEvent

    user = django_user_model.objects.create_user("owner", password="x")
    request = RequestFactory().post("/v1.41/containers/create")
    request.user = user
    config = {"image": "busybox", "cmd": ["true"], "name": "owned"}
    container = services.create_container(config, user=user, request=request, read=False)
    row = Container.objects.get(container_id=container.container_id)
    assert (container.pk, container.name) == (row.pk, "owned")
    assert row.user == user and row.state == "configured"
    event = AuditEvent.objects.get(action="container.create")
    assert (event.user, event.object_type, event.object_id) == (user, "container", str(row.pk))


def test_a_docker_api_request_hands_its_audit_events_to_the_audit_thread(db, django_user_model, monkeypatch):
    """The Docker API's views hand their audit events to the audit thread when they are done (the
    answer goes out meanwhile), not during the view; a view that fails writes them at once; an
    object gone by then leaves the event without it."""
    from django.http import HttpResponse
    from django.test import RequestFactory

    from project import audit
    from project.dockerapi.base import docker_endpoint
    from project.models import AuditEvent

    handed = []
    monkeypatch.setattr(audit._writer, "submit", handed.append)  # the thread's side, by hand below
    user = django_user_model.objects.create_user("auditor", password="x")

    @docker_endpoint("POST")
    def view(request):
        audit.record(request, "thing.do", lambda: user, how="now")
        audit.record(request, "thing.gone", lambda: Container.objects.get(container_id="nope"))
        assert not AuditEvent.objects.exists()  # not while the view runs
        return HttpResponse(status=204)

    @docker_endpoint("POST")
    def failing(request):
        audit.record(request, "thing.fail")
        raise RuntimeError("boom")

    request = RequestFactory().post("/v1.41/thing")
    request.user = user
    assert view(request).status_code == 204 and len(handed) == 1
    audit._save_all(handed[0])
    done, gone = AuditEvent.objects.get(action="thing.do"), AuditEvent.objects.get(action="thing.gone")
    assert (done.user, done.object_type, done.object_id) == (user, "user", str(user.pk))
    assert done.detail == {"how": "now"}
    assert (gone.object_type, gone.object_id) == ("", "")
    with pytest.raises(RuntimeError):
        failing(request)
    assert AuditEvent.objects.filter(action="thing.fail").exists()

def test_the_docker_apis_actions_audit_their_container(db, engine, django_user_model, settings, monkeypatch):
    """A start's audit event names the container's row, read once the answer is sent; a removal's
    names the row it removed."""
    from django.test import RequestFactory

    from containers import dockerapi
    from project.models import AuditEvent

    from project import audit

    settings.CELERY_TASK_ALWAYS_EAGER = True
    monkeypatch.setattr(audit._writer, "submit", audit._save_all)  # the audit thread's work, here
    user = django_user_model.objects.create_superuser("operator", password="x")
    factory = RequestFactory()
    container = services.create_container({"image": "busybox", "cmd": ["sleep", "30"], "name": "audited"},
                                          user=user, read=False)
    for view, method, action in ((dockerapi.container_start, "post", "container.start"),
                                 (dockerapi.container_delete, "delete", "container.remove")):
        request = getattr(factory, method)("/v1.41/containers/audited?force=1")
        request.user = user
        response = view(request, "audited")
        assert response.status_code == 204, response.content
        event = AuditEvent.objects.get(action=action)
        assert (event.object_type, event.object_id) == ("container", str(container.pk))


def test_after_starts_thread_still_acts_on_an_exit_no_watcher_saw(db, engine, monkeypatch):
    """after_start's thread leaves a process that ended at once to the exit watcher, and acts on
    it itself a moment later: with no watcher (as here), a --rm container is removed all the same."""
    monkeypatch.setattr(services, "EXIT_LEFT_TO_WATCHER_S", 0.05)
    record = engine.containers.create(ContainerConfig(image="busybox", cmd=["true"], auto_remove=True))
    services.sync_container(record)
    engine.containers.start(record.id)
    engine.containers.wait(record.id, timeout=10, condition="not-running")
    assert services.after_start(record.id, watched=True) is None
    with pytest.raises(NotFound):
        engine.containers.get(record.id)
    assert not Container.objects.filter(container_id=record.id).exists()


def test_a_rm_containers_row_goes_before_its_files(db, engine, monkeypatch):
    """docker run --rm is answered once the container is moved out of the store, and may reuse its
    name at once: the row (which holds the name too) is gone before the files are deleted, with
    its die and destroy events, sent once."""
    from project import realtime

    sent = []
    monkeypatch.setattr(realtime, "publish_on_commit", lambda group, event: sent.append(event["state"]))
    record = engine.containers.create(ContainerConfig(image="busybox", cmd=["sh", "-c", "exit 3"],
                                                      auto_remove=True, name="reused"))
    services.sync_container(record)
    engine.containers.start(record.id)
    engine.containers.wait(record.id, timeout=10, condition="not-running")
    rows_when_deleting = []
    real_delete = engine.containers._delete_aside
    monkeypatch.setattr(engine.containers, "_delete_aside", lambda *paths: (
        rows_when_deleting.append(Container.objects.filter(name="reused").count()), real_delete(*paths)))
    assert services.handle_exit(record.id) is None
    assert rows_when_deleting == [0]
    assert sent[-2:] == ["exited", "removed"] and sent.count("removed") == 1
    services.forget_container(record.id)  # a late second one: nothing more
    assert sent.count("removed") == 1


def test_a_starts_audit_event_names_a_rm_container_gone_since(db, engine, django_user_model, settings,
                                                              monkeypatch):
    """The audit event of a start is written after the answer; a --rm container may have taken its
    row away by then (docker run --rm true): the event names the row the create made."""
    from django.test import RequestFactory

    from containers import dockerapi
    from project import audit
    from project.models import AuditEvent

    settings.CELERY_TASK_ALWAYS_EAGER = True
    handed = []
    monkeypatch.setattr(audit._writer, "submit", handed.append)
    user = django_user_model.objects.create_superuser("runner", password="x")
    container = services.create_container({"image": "busybox", "cmd": ["sleep", "30"], "name": "gone-soon"},
                                          user=user, read=False)
    request = RequestFactory().post("/v1.41/containers/gone-soon/start")
    request.user = user
    assert dockerapi.container_start(request, "gone-soon").status_code == 204
    Container.objects.filter(pk=container.pk).delete()  # what --rm does once it ended
    audit._save_all(handed[0])
    event = AuditEvent.objects.get(action="container.start")
    assert (event.object_type, event.object_id) == ("container", str(container.pk))
