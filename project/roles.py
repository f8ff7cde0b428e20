"""The three roles of DESIGN.md, as Django groups: viewer (read), operator (run, stop, exec), admin.

``sync_roles()`` runs after every migrate, so permissions of models added later join their
roles without a data migration:

- viewer: every ``view_*`` permission of Berth's apps;
- operator: the viewer's, plus every permission of the engine apps (images, containers) and
  the right to start and cancel jobs;
- admin: every permission, including users, groups and tokens.
"""

from django.contrib.auth.models import Group, Permission

from .choices import RoleChoices

BERTH_APPS = ("project", "images", "containers")
ENGINE_APPS = ("images", "containers")
OPERATOR_EXTRA = ("project.add_job", "project.change_job", "project.cancel_job")


def role_permissions(role: str):
    """Return the queryset of permissions a role's group should hold."""
    perms = Permission.objects.select_related("content_type")
    if role == RoleChoices.ADMIN:
        return perms.all()
    viewer = perms.filter(content_type__app_label__in=BERTH_APPS, codename__startswith="view_")
    if role == RoleChoices.VIEWER:
        return viewer
    extra_codenames = [p.split(".", 1)[1] for p in OPERATOR_EXTRA]
    engine = perms.filter(content_type__app_label__in=ENGINE_APPS)
    extra = perms.filter(content_type__app_label="project", codename__in=extra_codenames)
    return (viewer | engine | extra).distinct()


def sync_roles(**kwargs) -> None:
    """Create the role groups and give each exactly its permissions."""
    for role in RoleChoices.values:
        group, _ = Group.objects.get_or_create(name=role)
        group.permissions.set(role_permissions(role))


def has_role(user, role: str) -> bool:
    """True if ``user`` holds ``role`` (superusers hold every role; admins include operators...)."""
    if not user.is_authenticated:
        return False
    if user.is_superuser:
        return True
    order = list(RoleChoices.values)
    wanted = order.index(role)
    names = set(user.groups.values_list("name", flat=True))
    return any(order.index(n) >= wanted for n in names if n in order)
