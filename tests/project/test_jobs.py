"""Jobs: JobRun's log and its messages, and the Docker API's stream of a job."""

import asyncio
import json

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
    assert [e["type"] for e in in_group] == ["job.state", "job.events"]  # running; the lines and the end
    assert [(e["seq"], e["stream"]) for e in in_group[1]["events"]] == [(n + 1, f"line {n}\n") for n in range(3)]
    assert all(e["type"] == "job.event" and e["job"] == job.pk for e in in_group[1]["events"])
    end = in_group[1]["state"]
    assert end["type"] == "job.state" and end["status"] == "succeeded" and end["seq"] == 3
    assert published[-1] == ("events", end)


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
    assert [e["seq"] for e in published[-2][1]["events"]] == [1, 2]


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


def _send(layer, job_id, event):
    return layer.group_send(f"job_{job_id}", {"type": "event.message", "event": event})


@pytest.mark.django_db(transaction=True)
def test_the_stream_sends_a_batch_and_ends_on_the_final_state_naming_its_last_line(memory_layer, monkeypatch):
    job = Job.objects.create(kind="build", target="app", status="running")
    reads = []
    real = streams._events_after
    monkeypatch.setattr(streams, "_events_after", lambda *a: reads.append(a) or real(*a))

    async def feed(layer):
        await _send(layer, job.pk, {"type": "job.events", "job": job.pk, "events": [
            {"type": "job.event", "job": job.pk, "seq": 1, "stream": "a\n"},
            {"type": "job.event", "job": job.pk, "seq": 2, "stream": "b\n"}]})
        await _send(layer, job.pk, {"type": "job.state", "job": job.pk, "status": "succeeded", "error": "", "seq": 2})

    assert _collect(job.pk, feed) == [{"stream": "a\n"}, {"stream": "b\n"}]
    assert len(reads) == 1  # the read when it started; the end needed none (the job "runs" in the db)


@pytest.mark.django_db(transaction=True)
def test_the_stream_ends_on_a_last_batch_that_carries_the_end(memory_layer, monkeypatch):
    job = Job.objects.create(kind="build", target="app", status="running")
    reads = []
    real = streams._events_after
    monkeypatch.setattr(streams, "_events_after", lambda *a: reads.append(a) or real(*a))

    async def feed(layer):
        await _send(layer, job.pk, {"type": "job.state", "job": job.pk, "status": "running", "error": ""})
        await _send(layer, job.pk, {"type": "job.events", "job": job.pk, "events": [
            {"type": "job.event", "job": job.pk, "seq": 1, "stream": "a\n"}]})
        await _send(layer, job.pk, {"type": "job.events", "job": job.pk, "events": [
            {"type": "job.event", "job": job.pk, "seq": 2, "stream": "b\n"},
            {"type": "job.event", "job": job.pk, "seq": 3, "stream": "c\n"}],
            "state": {"type": "job.state", "job": job.pk, "status": "succeeded", "error": "", "seq": 3}})

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
        state = {"type": "job.state", "job": job.pk, "status": "succeeded", "error": "", "seq": 2}
        await _send(get_channel_layer(), job.pk, {"type": "job.events", "job": job.pk, "events": [
            {"type": "job.event", "job": job.pk, "seq": 1, "stream": "a\n"},
            {"type": "job.event", "job": job.pk, "seq": 2, "stream": "b\n"}], "state": state})
        frames = [await communicator.receive_json_from(5) for _ in range(3)]
        await communicator.disconnect()
        return frames

    frames = asyncio.run(main())
    assert [f.get("seq") for f in frames] == [1, 2, 2] and frames[2]["status"] == "succeeded"
    assert [f["type"] for f in frames] == ["job.event", "job.event", "job.state"]
