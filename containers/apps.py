from django.apps import AppConfig


class ContainersConfig(AppConfig):
    """Containers, exec sessions and volumes: run, start, stop, attach, exec, diff, cp, commit."""

    name = "containers"
    default_auto_field = "django.db.models.BigAutoField"
