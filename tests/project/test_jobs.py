"""Jobs: JobRun's log and its messages, and the Docker API's stream of a job."""

import asyncio
import json
import time

import pytest
from channels.layers import get_channel_layer

from project import jobs
from project.dockerapi import streams
from project.models import Job, JobEvent


@pytest.fixture
def published(monkeypatch):
    """Every event JobRun publishes, as (group, event), in order."""
    sent = []
    monkeypatch.setattr(jobs.realtime, "publish", lambda group, event: sent.append((group, event)))
    return sent


def test_a_job_s_lines_are_one_message_per_batch_and_its_end_names_the_last(db, published):
    job = Job.objects.create(kind="build", target="app")
    with jobs.JobRun(job.pk) as run:
        for n in range(3):
            run.emit({"stream": f"line {n}\n"})
        run.set_result({"image": "sha256:x"})
    job.refresh_from_db()
    assert job.status == "succeeded" and job.result == {"image": "sha256:x"}
    assert list(job.events.values_list("seq", "data")) == [(n + 1, {"stream": f"line {n}\n"}) for n in range(3)]
    in_group = [event for group, event in published if group == job.group_name]
    assert [e["type"] for e in in_group] == ["job.events"]  # a short job: one message, all in order
    running, *lines, end = in_group[0]["events"]
    assert running["type"] == "job.state" and running["status"] == "running"
    assert [(e["seq"], e["stream"]) for e in lines] == [(n + 1, f"line {n}\n") for n in range(3)]
    assert all(e["type"] == "job.event" and e["job"] == job.pk for e in lines)
    assert end["type"] == "job.state" and end["status"] == "succeeded" and end["seq"] == 3
    assert [(g, e["status"]) for g, e in published if g == "events"] == [("events", "running"), ("events", "succeeded")]


def test_a_failed_job_keeps_its_error_line_and_ends_with_it(db, published):
    job = Job.objects.create(kind="build", target="app")
    with jobs.JobRun(job.pk) as run:
        run.emit({"stream": "Step 1/1 : RUN false\n"})
        from runtime.errors import InvalidArgument
        raise InvalidArgument("bad step")
    job.refresh_from_db()
    assert job.status == "failed" and job.error == "bad step"
    assert [e.data for e in job.events.all()] == [
        {"stream": "Step 1/1 : RUN false\n"}, {"error": "bad step", "errorDetail": {"message": "bad step"}}]
    assert published[-1][1]["status"] == "failed" and published[-1][1]["seq"] == 2
    assert [e.get("seq") for e in published[-2][1]["events"]] == [None, 1, 2, 2]  # running, 2 lines, the end


@pytest.mark.django_db(transaction=True)
def test_a_longer_job_s_group_hears_it_runs_with_its_first_batch(published, monkeypatch):
    monkeypatch.setattr(jobs, "EVENT_FLUSH_INTERVAL", 0.01)
    job = Job.objects.create(kind="build", target="app")
    with jobs.JobRun(job.pk) as run:
        run.emit({"stream": "first\n"})
        for _ in range(200):  # the writer thread sends the first batch on its own
            if any(g == job.group_name for g, _ in published):
                break
            time.sleep(0.01)
        first = [e for g, e in published if g == job.group_name]
        assert [i.get("status") or i.get("stream") for i in first[0]["events"]] == ["running", "first\n"]
        run.emit({"stream": "second\n"})
    batches = [e["events"] for g, e in published if g == job.group_name]
    assert [[i.get("status") or i.get("stream") for i in b] for b in batches[1:]] == [["second\n", "succeeded"]]


def _collect(job_id, feed):
    """Run the job's stream against the in-memory channel layer; ``feed(layer)`` publishes to it."""
    async def main():
        chunks = []

        async def read():
            async for chunk in streams.job_stream(job_id):
                chunks.append(chunk)

        task = asyncio.ensure_future(read())
        layer = get_channel_layer()
        while not layer.groups.get(f"job_{job_id}"):  # the stream has joined and read the database
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        await feed(layer)
        await asyncio.wait_for(task, 10)
        return [json.loads(line) for line in b"".join(chunks).decode().splitlines()]

    return asyncio.run(main())


@pytest.fixture
def memory_layer(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


@pytest.fixture
def reads(monkeypatch):
    """The stream's database reads of job events, recorded (they still happen)."""
    calls = []
    real = streams._events_after
    monkeypatch.setattr(streams, "_events_after", lambda *a: calls.append(a) or real(*a))
    return calls


def _send(layer, job_id, event):
    return layer.group_send(f"job_{job_id}", {"type": "event.message", "event": event})


@pytest.mark.django_db(transaction=True)
def test_the_stream_sends_a_batch_and_ends_on_the_final_state_naming_its_last_line(memory_layer, reads):
    job = Job.objects.create(kind="build", target="app", status="running")

    async def feed(layer):
        await _send(layer, job.pk, {"type": "job.events", "job": job.pk, "events": [
            {"type": "job.event", "job": job.pk, "seq": 1, "stream": "a\n"},
            {"type": "job.event", "job": job.pk, "seq": 2, "stream": "b\n"}]})
        await _send(layer, job.pk, {"type": "job.state", "job": job.pk, "status": "succeeded", "error": "", "seq": 2})

    assert _collect(job.pk, feed) == [{"stream": "a\n"}, {"stream": "b\n"}]
    assert len(reads) == 1  # the read when it started; the end needed none (the job "runs" in the db)


@pytest.mark.django_db(transaction=True)
def test_the_stream_ends_on_a_last_batch_that_carries_the_end(memory_layer, reads):
    job = Job.objects.create(kind="build", target="app", status="running")

    async def feed(layer):
        await _send(layer, job.pk, {"type": "job.state", "job": job.pk, "status": "running", "error": ""})
        await _send(layer, job.pk, {"type": "job.events", "job": job.pk, "events": [
            {"type": "job.event", "job": job.pk, "seq": 1, "stream": "a\n"}]})
        await _send(layer, job.pk, {"type": "job.events", "job": job.pk, "events": [
            {"type": "job.event", "job": job.pk, "seq": 2, "stream": "b\n"},
            {"type": "job.event", "job": job.pk, "seq": 3, "stream": "c\n"},
            {"type": "job.state", "job": job.pk, "status": "succeeded", "error": "", "seq": 3}]})

    assert _collect(job.pk, feed) == [{"stream": "a\n"}, {"stream": "b\n"}, {"stream": "c\n"}]
    assert len(reads) == 1


@pytest.mark.django_db(transaction=True)
def test_the_stream_reads_the_database_after_a_lost_batch(memory_layer):
    job = Job.objects.create(kind="build", target="app", status="running")

    async def feed(layer):
        from channels.db import database_sync_to_async

        def commit():
            JobEvent.objects.bulk_create([JobEvent(job=job, seq=n, data={"stream": f"{n}\n"}) for n in (1, 2, 3)])
            Job.objects.filter(pk=job.pk).update(status="succeeded")

        await database_sync_to_async(commit)()
        # The batch with lines 1 and 2 never arrives; the one with 3 does: the stream reads 1 to 3.
        await _send(layer, job.pk, {"type": "job.events", "job": job.pk, "events": [
            {"type": "job.event", "job": job.pk, "seq": 3, "stream": "3\n"}]})

    assert _collect(job.pk, feed) == [{"stream": "1\n"}, {"stream": "2\n"}, {"stream": "3\n"}]


@pytest.mark.django_db(transaction=True)
def test_the_job_page_socket_gets_a_batch_line_by_line_then_the_end(memory_layer):
    from channels.testing import WebsocketCommunicator
    from django.contrib.auth.models import User

    from project.consumers import JobConsumer

    job = Job.objects.create(kind="build", target="app", status="running")
    user = User.objects.create_user("viewer")

    async def main():
        communicator = WebsocketCommunicator(JobConsumer.as_asgi(), f"/ws/jobs/{job.pk}")
        communicator.scope.update({"user": user, "url_route": {"kwargs": {"pk": job.pk}}})
        connected, _ = await communicator.connect()
        assert connected
        await _send(get_channel_layer(), job.pk, {"type": "job.events", "job": job.pk, "events": [
            {"type": "job.state", "job": job.pk, "status": "running", "error": ""},
            {"type": "job.event", "job": job.pk, "seq": 1, "stream": "a\n"},
            {"type": "job.event", "job": job.pk, "seq": 2, "stream": "b\n"},
            {"type": "job.state", "job": job.pk, "status": "succeeded", "error": "", "seq": 2}]})
        frames = [await communicator.receive_json_from(5) for _ in range(4)]
        await communicator.disconnect()
        return frames

    frames = asyncio.run(main())
    assert [f.get("seq") for f in frames] == [None, 1, 2, 2] and frames[3]["status"] == "succeeded"
    assert [f["type"] for f in frames] == ["job.state", "job.event", "job.event", "job.state"]
