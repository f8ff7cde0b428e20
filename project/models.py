"""Cross-cutting models: API tokens, jobs (long operations with their whole log) and the audit log."""

import hashlib
import logging
import os
import secrets
import threading
import time

from django.conf import settings
from django.db import models
from django.utils import timezone

from .choices import ACTIVE_JOB_STATES, JobKindChoices, JobStatusChoices

__all__ = ("ApiToken", "AuditEvent", "Job", "JobEvent")

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "berth_"


def hash_token(token: str) -> str:
    """Tokens are stored as their SHA-256 only; the clear text is shown once, at creation."""
    return hashlib.sha256(token.encode()).hexdigest()


AUTH_CACHE_SECONDS = 5.0
_auth_cache: dict[str, tuple[float, "ApiToken"]] = {}
_auth_lock = threading.Lock()


AUTH_CHANGED_FILE = "auth_changed"


def forget_authentications(**kwargs) -> None:
    """Drop every remembered token (a token, user or group membership changed), and say so to the
    front, which replays Daphne's answers to pings of the same credentials (project/front.py): a
    new ``DATA_DIR/auth_changed`` file (its inode is what the front compares)."""
    _auth_cache.clear()
    path = os.path.join(settings.DATA_DIR, AUTH_CHANGED_FILE)
    tmp = f"{path}.tmp-{secrets.token_hex(4)}"
    try:
        with open(tmp, "w") as f:
            f.write(secrets.token_hex(8))
        os.replace(tmp, path)
    except OSError as e:
        logger.warning("could not tell the front that authentications changed (%s): %s", path, e)


class ApiTokenManager(models.Manager):
    """Creates tokens and finds the live one behind a clear-text token."""

    def create_token(self, user, description: str = "") -> tuple["ApiToken", str]:
        """Create a token for ``user``; return it with its clear text (never stored)."""
        clear = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = self.create(user=user, description=description, key_hash=hash_token(clear), prefix=clear[:12])
        return token, clear

    def authenticate(self, clear: str) -> "ApiToken | None":
        """Return the active token for ``clear`` (and note its use), or None.

        A token found is remembered for ``AUTH_CACHE_SECONDS`` in this process, so that the
        docker CLI's bursts of requests (ping, create, attach, wait, start) cost one query, not
        five. Any change to a token, a user or a user's groups in this process (the token page,
        the admin: both run in the web process) forgets them all at once; a change made by
        another process (a manage.py command) is seen within those seconds.
        """
        key = hash_token(clear)
        now = time.monotonic()
        cached = _auth_cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        token = (
            self.select_related("user")
            .filter(key_hash=key, revoked_at__isnull=True, user__is_active=True)
            .first()
        )
        if token is not None:
            with _auth_lock:
                if len(_auth_cache) > 1000:
                    _auth_cache.clear()
                _auth_cache[key] = (now + AUTH_CACHE_SECONDS, token)
            now = timezone.now()
            # Write last_used at most once a minute: tokens are read on every API call.
            if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
                ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
                token.last_used_at = now
        return token


class ApiToken(models.Model):
    """A bearer token for the Docker Engine API and /api/. Only its hash is stored."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    description = models.CharField(max_length=200, blank=True)
    prefix = models.CharField(max_length=16, help_text="The first characters, to recognise a token.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenManager()

    class Meta:
        ordering = ("-created_at",)
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @property
    def is_active(self) -> bool:
        """A token is active until it is revoked."""
        return self.revoked_at is None

    def revoke(self) -> None:
        """Revoke the token: every later request that carries it gets 401."""
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=("revoked_at",))


class Job(models.Model):
    """One long operation (pull, push, load, import, save, build): status, who, when, progress, log.

    The whole event log is kept in JobEvent rows, so a page opened late shows everything.
    """

    kind = models.CharField(max_length=16, choices=JobKindChoices.choices)
    status = models.CharField(max_length=16, choices=JobStatusChoices.choices, default=JobStatusChoices.PENDING)
    target = models.CharField(max_length=512, help_text="What the job acts on, e.g. an image reference.")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    node = models.CharField(max_length=255, blank=True)
    params = models.JSONField(default=dict, blank=True)
    progress = models.JSONField(default=dict, blank=True, help_text="The latest progress, per item.")
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)
        permissions = (("cancel_job", "Can cancel a running job"),)

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.target} (#{self.pk})"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_JOB_STATES

    @property
    def group_name(self) -> str:
        """The Channels group that receives this job's events."""
        return f"job_{self.pk}"

    @property
    def result_label(self) -> str:
        """What the job's result link says: the images it made, the pushed digest, or the download."""
        result = self.result or {}
        if self.kind == JobKindChoices.SAVE:
            return f"Download the archive ({result.get('size', 0)} bytes)"
        if self.kind == JobKindChoices.PUSH:
            return result.get("digest", "")
        return ", ".join(result.get("tags") or []) or result.get("image") or "Images"

    @property
    def duration(self):
        if self.started_at is None:
            return None
        return (self.finished_at or timezone.now()) - self.started_at


class JobEvent(models.Model):
    """One entry of a job's log: a message, a progress report or a state change."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    time = models.DateTimeField(default=timezone.now)
    data = models.JSONField()

    class Meta:
        ordering = ("job", "seq")
        constraints = (models.UniqueConstraint(fields=("job", "seq"), name="jobevent_job_seq_unique"),)

    def __str__(self) -> str:
        return f"job {self.job_id} #{self.seq}"

    @property
    def text(self) -> str:
        """The log line: an error, a message or a Docker status, with the layer id it is about."""
        data = self.data
        line = data.get("error") or data.get("message") or data.get("status") or data.get("stream") or ""
        return f"{line} [{data['id']}]" if data.get("id") else line


class AuditEvent(models.Model):
    """Who did what to which object, when, and how it ended."""

    time = models.DateTimeField(default=timezone.now, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    action = models.CharField(max_length=64)
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField(max_length=255, blank=True)
    outcome = models.CharField(max_length=16, default="ok")
    detail = models.JSONField(default=dict, blank=True)
    remote_addr = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ("-time",)

    def __str__(self) -> str:
        return f"{self.time:%Y-%m-%d %H:%M:%S} {self.user} {self.action} {self.object_type} {self.object_id}"
