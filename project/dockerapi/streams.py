"""Streaming a job's events as the Docker API's JSON-lines answer (pull, push, load, build).

The stream joins the job's Channels group first, then replays the log already in the database,
then follows live events: JobRun publishes each batch of log lines once it is committed, as one
``job.events`` message, and its lines that come next in seq order are sent as they arrived (one
write per message); the job's final state, in the message of its last batch, names its last line
(``seq``), committed with it, so a stream that has sent that line ends without reading the
database again (a cached build: one message, and the one read when the stream starts). A gap in
seq, or an end without that line, sends it back to the database; every few seconds it looks at
the database too, so an event lost by the channel layer is still sent, and the stream ends when
the job does.
"""

import asyncio
import json
import logging

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from ..choices import TERMINAL_JOB_STATES
from ..models import Job

logger = logging.getLogger(__name__)

POLL_INTERVAL = 2.0
INTERNAL_KEYS = ("type", "job", "seq", "current", "total", "kind", "target")


def docker_message(event: dict) -> dict:
    """A job event without Berth's own keys: what dockerd would have sent."""
    return {k: v for k, v in event.items() if k not in INTERNAL_KEYS}


@database_sync_to_async
def _events_after(job_id: int, seq: int):
    job = Job.objects.get(pk=job_id)
    events = list(job.events.filter(seq__gt=seq).values_list("seq", "data"))
    return events, job.status, job.error


def _unbatch(event: dict) -> list[dict]:
    """The events in one published message (a ``job.events`` batch holds several, in order)."""
    if event.get("type") != "job.events":
        return [event]
    return list(event.get("events") or [])


def _line(message: dict) -> bytes:
    return (json.dumps(message) + "\r\n").encode()


async def job_stream(job_id: int, *, cancel_on_disconnect: bool = True):
    """Yield a job's events as JSON lines until it ends."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    group = f"job_{job_id}"
    await layer.group_add(group, channel)
    last_seq = 0
    finished = False
    read = True  # look at the database (the log after last_seq, the job's state) before waiting
    try:
        while True:
            if read:
                events, status, error = await _events_after(job_id, last_seq)
                if events:
                    last_seq = events[-1][0]
                    yield b"".join(_line(docker_message(data)) for _, data in events)
                if status in TERMINAL_JOB_STATES:
                    finished = True
                    return
            try:
                message = await asyncio.wait_for(layer.receive(channel), POLL_INTERVAL)
            except asyncio.TimeoutError:
                read = True
                continue
            event = message.get("event", {})
            read = ended = False
            chunk = []  # what one message brings goes out as one write, not one per line
            for item in _unbatch(event):
                kind = item.get("type")
                if kind == "job.progress":
                    chunk.append(_line(docker_message(item)))
                elif kind == "job.event":
                    seq = item.get("seq", 0)
                    if seq == last_seq + 1:
                        last_seq = seq
                        chunk.append(_line(docker_message(item)))
                    elif seq > last_seq:
                        read = True  # a batch the channel layer lost: read them, in order
                        break
                elif kind == "job.state":
                    if item.get("status") in TERMINAL_JOB_STATES:
                        # The end: its lines were committed with it; if all of them are sent, done.
                        ended = item.get("seq") == last_seq
                        read = not ended
                    # "running" has nothing to read.
                else:
                    read = True
            if chunk:
                yield b"".join(chunk)
            if ended:
                finished = True
                return
    except (asyncio.CancelledError, GeneratorExit):
        if cancel_on_disconnect and not finished:
            # The client went away (Ctrl-C on `docker pull`): stop the job as dockerd does.
            from ..jobs import request_cancel

            job = await database_sync_to_async(Job.objects.get)(pk=job_id)
            await database_sync_to_async(request_cancel)(job)
        raise
    finally:
        # Leaving the group is a Redis round trip: done in the background, so that the end of the
        # answer goes out first (the docker CLI exits on it).
        _in_background(layer.group_discard(group, channel))


_BACKGROUND: set[asyncio.Task] = set()  # referenced until done (the loop keeps tasks only weakly)


def _in_background(coro) -> None:
    task = asyncio.ensure_future(coro)
    _BACKGROUND.add(task)
    task.add_done_callback(_background_done)


def _background_done(task: asyncio.Task) -> None:
    _BACKGROUND.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.warning("leaving a job's group: %s", task.exception())


def job_response(job, *, cancel_on_disconnect: bool = True):
    """The Docker API's streamed JSON answer for a job (pull, push, import, load, build).

    ``cancel_on_disconnect``: a client that goes away stops the job (as dockerd does for a pull);
    not for jobs whose input is already uploaded and half applied on purpose (import, load).
    """
    from django.http import StreamingHttpResponse

    response = StreamingHttpResponse(job_stream(job.pk, cancel_on_disconnect=cancel_on_disconnect),
                                     content_type="application/json")
    response["X-Berth-Job"] = str(job.pk)
    return response
