from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ProjectConfig(AppConfig):
    """Berth's cross-cutting app: tokens, jobs, audit log, roles, the Docker API base."""

    name = "project"
    verbose_name = "Berth"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.contrib.auth import get_user_model
        from django.contrib.auth.models import Group
        from django.db.models.signals import m2m_changed, post_delete, post_save

        from .models import ApiToken, forget_authentications
        from .roles import sync_roles

        post_migrate.connect(sync_roles, dispatch_uid="berth_sync_roles")
        # Remembered API tokens (ApiTokenManager.authenticate) go when what they stand for changes.
        user = get_user_model()
        for signal, sender in ((post_save, ApiToken), (post_delete, ApiToken), (post_save, user),
                               (post_delete, user), (m2m_changed, user.groups.through),
                               (m2m_changed, user.user_permissions.through),
                               (m2m_changed, Group.permissions.through)):
            signal.connect(forget_authentications, sender=sender, weak=False,
                           dispatch_uid=f"berth_forget_auth_{signal!r}_{sender.__name__}")
