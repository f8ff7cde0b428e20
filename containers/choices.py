"""Choice sets of the containers app. State values are runtime.state.ContainerState's (Podman's names)."""

from django.db import models


class ContainerStateChoices(models.TextChoices):
    """Podman's states, lower case; Docker's words come from ``docker_status``."""

    CONFIGURED = "configured", "Created"
    CREATED = "created", "Created"
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    STOPPING = "stopping", "Stopping"
    EXITED = "exited", "Exited"
    REMOVING = "removing", "Removing"
    DEAD = "dead", "Dead"


ACTIVE_STATES = (ContainerStateChoices.RUNNING, ContainerStateChoices.PAUSED, ContainerStateChoices.STOPPING)
STARTABLE_STATES = (ContainerStateChoices.CONFIGURED, ContainerStateChoices.CREATED, ContainerStateChoices.EXITED)


class RestartPolicyChoices(models.TextChoices):
    NO = "no", "Never"
    ON_FAILURE = "on-failure", "On failure"
    ALWAYS = "always", "Always"
    UNLESS_STOPPED = "unless-stopped", "Unless stopped"
