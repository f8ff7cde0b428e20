"""Images, their layers and tags, and the registries Berth talks to.

The disk (runtime/) is the truth about which images exist on a node; these rows track it. Tasks
write them from the engine's answers and ``services.reconcile_images()`` repairs any drift.
"""

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

__all__ = ("Image", "ImageLayer", "Layer", "Registry", "Tag")


class Registry(models.Model):
    """A registry and the credentials Berth uses for it (Docker Hub is ``docker.io``).

    WARNING: the password is stored as given, like docker's config.json without a credential helper.
    """

    host = models.CharField(max_length=255, unique=True, help_text="e.g. docker.io or 127.0.0.1:5000")
    username = models.CharField(max_length=255, blank=True)
    password = models.CharField(max_length=1024, blank=True)
    insecure = models.BooleanField(default=False, help_text="Use plain HTTP (loopback registries always do).")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("host",)
        verbose_name_plural = "registries"

    def __str__(self) -> str:
        return self.host

    @property
    def credentials(self) -> tuple[str, str] | None:
        return (self.username, self.password) if self.username else None


class Layer(models.Model):
    """One unpacked layer of the node's layer store, shared by every image that stacks it."""

    chain_id = models.CharField(max_length=71, unique=True)
    diff_id = models.CharField(max_length=71, db_index=True)
    digest = models.CharField(max_length=71, blank=True, help_text="The compressed blob it came from.")
    size = models.BigIntegerField(default=0)

    class Meta:
        ordering = ("chain_id",)

    def __str__(self) -> str:
        return self.chain_id[7:19]


class Image(models.Model):
    """An image on a node: its config digest is its id (``sha256:...``)."""

    digest = models.CharField(max_length=71, unique=True, help_text="The config digest: Docker's image id.")
    node = models.CharField(max_length=255)
    size = models.BigIntegerField(default=0)
    created = models.DateTimeField(null=True, blank=True, help_text="When the image was built (from its config).")
    architecture = models.CharField(max_length=32, blank=True)
    os = models.CharField(max_length=32, blank=True)
    config = models.JSONField(default=dict, blank=True)
    repo_digests = models.JSONField(default=list, blank=True)
    layers = models.ManyToManyField(Layer, through="ImageLayer", related_name="images")
    job = models.ForeignKey("project.Job", null=True, blank=True, on_delete=models.SET_NULL,
                            help_text="The pull, import, load or build that made it.")
    added_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("-created",)

    def __str__(self) -> str:
        tags = [t.name for t in self.tags.all()]
        return tags[0] if tags else self.short_id

    def get_absolute_url(self) -> str:
        return reverse("images:image_detail", args=[self.short_id])

    @property
    def short_id(self) -> str:
        return self.digest[7:19]

    @property
    def is_dangling(self) -> bool:
        return not self.tags.exists()


class ImageLayer(models.Model):
    """The ordered link of an image to its layers (position 0 at the bottom)."""

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="image_layers")
    layer = models.ForeignKey(Layer, on_delete=models.PROTECT, related_name="image_layers")
    position = models.PositiveIntegerField()

    class Meta:
        ordering = ("image", "position")
        constraints = (models.UniqueConstraint(fields=("image", "position"), name="imagelayer_position_unique"),)


class Tag(models.Model):
    """A name pointing at an image, as ``docker images`` shows it: ``busybox:latest``."""

    name = models.CharField(max_length=512)
    node = models.CharField(max_length=255)
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="tags")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("name",)
        constraints = (models.UniqueConstraint(fields=("node", "name"), name="tag_node_name_unique"),)

    def __str__(self) -> str:
        return self.name

    @property
    def repository(self) -> str:
        return self.name.rsplit(":", 1)[0] if ":" in self.name.rsplit("/", 1)[-1] else self.name

    @property
    def tag(self) -> str:
        last = self.name.rsplit("/", 1)[-1]
        return last.rsplit(":", 1)[1] if ":" in last else ""
