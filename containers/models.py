"""Containers, their exec sessions, and volumes, as the node's engine has them.

The engine's disk is the truth; these rows track it. The worker's tasks write them from the
engine's answers, a watcher in the worker notices exits, and ``services.reconcile_containers()``
repairs drift after restarts.
"""

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

from .choices import ACTIVE_STATES, ContainerStateChoices

__all__ = ("Container", "ExecSession", "Network", "Volume")


class Container(models.Model):
    """A container on a node: its configuration, state, exit code and the image it runs."""

    container_id = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=255)
    node = models.CharField(max_length=255)
    image = models.ForeignKey("images.Image", null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="containers")
    image_ref = models.CharField(max_length=512, help_text="The image as the user named it.")
    config = models.JSONField(default=dict, blank=True, help_text="The run options (runtime ContainerConfig).")
    state = models.CharField(max_length=16, choices=ContainerStateChoices.choices,
                             default=ContainerStateChoices.CONFIGURED)
    pid = models.IntegerField(default=0)
    exit_code = models.IntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    oom_killed = models.BooleanField(default=False)
    restart_count = models.PositiveIntegerField(default=0)
    # WARNING: a copy of the engine's manually_stopped (a user stopped or killed it), as of the last
    # sync; the restart policies (unless-stopped, always after a host restart) read it.
    stopped_by_user = models.BooleanField(default=False)
    created = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        ordering = ("-created",)
        constraints = (models.UniqueConstraint(fields=("node", "name"), name="container_node_name_unique"),)
        permissions = (
            ("exec_container", "Can exec into and attach to a container"),
            ("operate_container", "Can start, stop, restart, kill, pause and unpause a container"),
        )

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("containers:container_detail", args=[self.name])

    @property
    def short_id(self) -> str:
        return self.container_id[:12]

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def group_name(self) -> str:
        return f"container_{self.pk}"


class ExecSession(models.Model):
    """A process started in a running container by exec (API, CLI or browser terminal)."""

    exec_id = models.CharField(max_length=64, unique=True)
    container = models.ForeignKey(Container, on_delete=models.CASCADE, related_name="exec_sessions")
    cmd = models.JSONField(default=list)
    tty = models.BooleanField(default=False)
    spec = models.JSONField(default=dict, blank=True, help_text="Cmd, Env, User, WorkingDir, Tty as created.")
    started = models.BooleanField(default=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    exit_code = models.IntegerField(null=True, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-started_at",)

    def __str__(self) -> str:
        return f"exec {self.exec_id[:12]} in {self.container}"


class Volume(models.Model):
    """A named volume (``docker volume``), kept under RUNTIME_ROOT/volumes/<name>/_data."""

    name = models.CharField(max_length=255)
    node = models.CharField(max_length=255)
    driver = models.CharField(max_length=32, default="local")
    mountpoint = models.CharField(max_length=1024)
    labels = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("name",)
        constraints = (models.UniqueConstraint(fields=("node", "name"), name="volume_node_name_unique"),)

    def __str__(self) -> str:
        return self.name


class Network(models.Model):
    """A container network (``docker network``): Docker's default ``bridge`` and user-defined ones."""

    network_id = models.CharField(max_length=64)
    name = models.CharField(max_length=255)
    node = models.CharField(max_length=255)
    driver = models.CharField(max_length=32, default="bridge")
    subnet = models.CharField(max_length=64, blank=True)
    gateway = models.CharField(max_length=64, blank=True)
    internal = models.BooleanField(default=False)
    labels = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("name",)
        constraints = (models.UniqueConstraint(fields=("node", "name"), name="network_node_name_unique"),)

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("networks:network_detail", args=[self.name])
