from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ProjectConfig(AppConfig):
    """Berth's cross-cutting app: tokens, jobs, audit log, roles, the Docker API base."""

    name = "project"
    verbose_name = "Berth"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from .roles import sync_roles

        post_migrate.connect(sync_roles, dispatch_uid="berth_sync_roles")
