from django.contrib import admin

from .models import ApiToken, AuditEvent, Job, JobEvent


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "user", "description", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    readonly_fields = ("prefix", "key_hash", "created_at", "last_used_at")
    actions = ("revoke",)

    def has_add_permission(self, request):
        # A token's clear text exists only at creation: create tokens on the tokens page or with createtoken.
        return False

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request, queryset):
        for token in queryset:
            token.revoke()


class JobEventInline(admin.TabularInline):
    model = JobEvent
    extra = 0
    readonly_fields = ("seq", "time", "data")
    can_delete = False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("pk", "kind", "target", "status", "user", "created_at", "finished_at")
    list_filter = ("kind", "status")
    search_fields = ("target",)
    inlines = (JobEventInline,)


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ("time", "user", "action", "object_type", "object_id", "outcome")
    list_filter = ("action", "outcome")
    readonly_fields = [f.name for f in AuditEvent._meta.fields]
