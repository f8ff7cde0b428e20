"""Choice sets shared by Berth's apps (NetBox's ChoiceSet style, as Django TextChoices)."""

from django.db import models


class JobStatusChoices(models.TextChoices):
    """Where a long operation stands."""

    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


TERMINAL_JOB_STATES = (JobStatusChoices.SUCCEEDED, JobStatusChoices.FAILED, JobStatusChoices.CANCELLED)
ACTIVE_JOB_STATES = (JobStatusChoices.PENDING, JobStatusChoices.RUNNING)


class JobKindChoices(models.TextChoices):
    """The kinds of long operation a Job records."""

    PULL = "pull", "Pull"
    PUSH = "push", "Push"
    LOAD = "load", "Load"
    IMPORT = "import", "Import"
    SAVE = "save", "Save"
    BUILD = "build", "Build"


class RoleChoices(models.TextChoices):
    """The three groups every user can be put in (see project.roles)."""

    VIEWER = "viewer", "Viewer"
    OPERATOR = "operator", "Operator"
    ADMIN = "admin", "Admin"
