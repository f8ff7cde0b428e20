from django.apps import AppConfig


class ImagesConfig(AppConfig):
    """Images, layers, tags and registries: pull, push, import, save, load, tag, rmi."""

    name = "images"
    default_auto_field = "django.db.models.BigAutoField"
