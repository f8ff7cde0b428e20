"""The states of a container, and which lifecycle verbs each state allows.

The names are Podman's (libpod/define/containerstate.go), in lower case. Docker has fewer words; the
mapping is done once, here, in ``ContainerState.docker_status``: Docker's "created" is our CONFIGURED
(and our CREATED), and Docker has no "stopping" (a container being stopped is still "running" there).

Transitions (the verb in brackets)::

    CONFIGURED --[init]--> CREATED --[start]--> RUNNING --[pause]--> PAUSED --[unpause]--> RUNNING
    RUNNING/PAUSED --[stop]--> STOPPING --> EXITED          RUNNING --(the process ends)--> EXITED
    EXITED --[start]--> RUNNING                             any --[remove]--> REMOVING --> (gone)
    a remove that failed or was interrupted leaves DEAD (Docker's "dead"): remove() retries it.
"""

from __future__ import annotations

from enum import Enum

from runtime.errors import InvalidState

__all__ = ["ACTIVE_STATES", "ContainerState", "check_state"]


class ContainerState(str, Enum):
    """Where a container is in its life. The value is what is stored on disk."""

    # Its storage and record exist, but it was never created in the OCI runtime (Docker's "created").
    CONFIGURED = "configured"
    # Created in runc: namespaces and cgroup set up, ``runc init`` waits for ``runc start``.
    CREATED = "created"
    # Its process runs.
    RUNNING = "running"
    # Its processes are frozen (cgroup freezer).
    PAUSED = "paused"
    # A stop signal was sent; the process has not exited yet.
    STOPPING = "stopping"
    # It ran and its process ended; the exit code is known (255 when it was lost, see containers.py).
    EXITED = "exited"
    # remove() is in progress.
    REMOVING = "removing"
    # A remove failed or was interrupted half-way; remove() may be tried again.
    DEAD = "dead"

    def docker_status(self) -> str:
        """Docker's ``State.Status`` word for this state (created/running/paused/exited/removing/dead).

        Docker's "restarting" is never returned: Berth has no restart loop waiting between runs.
        """
        return _DOCKER_STATUS[self]

    @property
    def is_active(self) -> bool:
        """True while a process of the container exists (running, paused or being stopped)."""
        return self in ACTIVE_STATES


_DOCKER_STATUS = {
    ContainerState.CONFIGURED: "created",
    ContainerState.CREATED: "created",
    ContainerState.RUNNING: "running",
    ContainerState.PAUSED: "paused",
    ContainerState.STOPPING: "running",
    ContainerState.EXITED: "exited",
    ContainerState.REMOVING: "removing",
    ContainerState.DEAD: "dead",
}

ACTIVE_STATES = (ContainerState.RUNNING, ContainerState.PAUSED, ContainerState.STOPPING)

S = ContainerState

# The states each lifecycle verb accepts. A verb called in another state raises InvalidState with
# the message Docker gives (see check_state). stop/kill on a container that is not running are
# handled by the caller (stop is a no-op there, as Docker's 304).
ACCEPTS: dict[str, tuple[ContainerState, ...]] = {
    "init": (S.CONFIGURED, S.EXITED),
    "start": (S.CONFIGURED, S.CREATED, S.EXITED),
    "stop": (S.CREATED, S.RUNNING, S.PAUSED, S.STOPPING),
    "kill": (S.CREATED, S.RUNNING, S.PAUSED, S.STOPPING),
    "pause": (S.RUNNING,),
    "unpause": (S.PAUSED,),
    "exec": (S.RUNNING,),
    "top": (S.RUNNING, S.PAUSED, S.STOPPING),
    "remove": (S.CONFIGURED, S.CREATED, S.EXITED, S.DEAD),
}


def check_state(verb: str, state: ContainerState, cid: str) -> None:
    """Raise InvalidState, in Docker's words, unless ``verb`` is allowed in ``state``."""
    if state in ACCEPTS[verb]:
        return
    if state is S.REMOVING:
        raise InvalidState(f"removal of container {cid} is already in progress")
    if verb == "start" and state is S.PAUSED:
        raise InvalidState("cannot start a paused container, try unpause instead")
    if verb == "start":
        raise InvalidState(f"container {cid} is already {state.value}")
    if verb == "init":
        raise InvalidState(f"container {cid} has already been created in runtime ({state.value})")
    if verb == "pause" and state is S.PAUSED:
        raise InvalidState(f"Container {cid} is already paused")
    if verb == "unpause" and state in ACTIVE_STATES:
        raise InvalidState(f"Container {cid} is not paused")
    if verb == "exec" and state is S.PAUSED:
        raise InvalidState(f"Container {cid} is paused, unpause the container before exec")
    if verb == "remove" and state is S.PAUSED:
        raise InvalidState(
            f"You cannot remove a paused container {cid}. "
            "Unpause and then stop the container before attempting removal or force remove"
        )
    if verb == "remove":
        raise InvalidState(
            f"You cannot remove a running container {cid}. "
            "Stop the container before attempting removal or force remove"
        )
    raise InvalidState(f"Container {cid} is not running")
