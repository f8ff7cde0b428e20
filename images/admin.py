from django.contrib import admin

from .models import Image, ImageLayer, Layer, Registry, Tag


class ImageLayerInline(admin.TabularInline):
    model = ImageLayer
    extra = 0
    readonly_fields = ("position", "layer")
    can_delete = False


class TagInline(admin.TabularInline):
    model = Tag
    extra = 0
    readonly_fields = ("name", "node", "created_at")
    can_delete = False


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    """Images mirror the engine's disk: change them through Berth (pull, tag, rmi), not here."""

    list_display = ("short_id", "__str__", "node", "size", "created", "architecture")
    search_fields = ("digest", "tags__name")
    list_filter = ("node", "architecture")
    readonly_fields = ("digest", "node", "size", "created", "architecture", "os", "config", "repo_digests", "job",
                       "added_at")
    inlines = (TagInline, ImageLayerInline)


@admin.register(Layer)
class LayerAdmin(admin.ModelAdmin):
    list_display = ("chain_id", "diff_id", "digest", "size")
    search_fields = ("chain_id", "diff_id", "digest")
    readonly_fields = ("chain_id", "diff_id", "digest", "size")


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    list_display = ("name", "image", "node", "created_at")
    search_fields = ("name",)
    readonly_fields = ("name", "node", "image", "user", "created_at")


@admin.register(Registry)
class RegistryAdmin(admin.ModelAdmin):
    list_display = ("host", "username", "insecure", "created_at")
    search_fields = ("host",)
