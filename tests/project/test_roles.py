"""The viewer / operator / admin groups and the permissions they carry."""

from django.contrib.auth.models import Group, User

from project.roles import has_role, sync_roles


def perms(user):
    return user.get_all_permissions()


def test_migrate_creates_the_three_groups(db):
    assert set(Group.objects.values_list("name", flat=True)) >= {"viewer", "operator", "admin"}


def test_a_viewer_reads_but_changes_nothing(db):
    user = User.objects.create_user("v")
    user.groups.add(Group.objects.get(name="viewer"))
    assert user.has_perm("project.view_job")
    assert not user.has_perm("project.add_job")
    assert not user.has_perm("project.cancel_job")
    assert not user.has_perm("auth.add_user")
    assert all(p.split(".")[1].startswith("view_") for p in perms(user))


def test_an_operator_runs_jobs_but_does_not_manage_users(db):
    user = User.objects.create_user("o")
    user.groups.add(Group.objects.get(name="operator"))
    assert user.has_perm("project.view_job") and user.has_perm("project.cancel_job")
    assert not user.has_perm("auth.add_user")
    assert not user.has_perm("project.delete_auditevent")


def test_an_admin_has_every_permission(db):
    user = User.objects.create_user("a")
    user.groups.add(Group.objects.get(name="admin"))
    assert user.has_perm("auth.add_user") and user.has_perm("project.cancel_job")


def test_roles_are_ordered(db):
    sync_roles()
    op = User.objects.create_user("op")
    op.groups.add(Group.objects.get(name="operator"))
    assert has_role(op, "viewer") and has_role(op, "operator") and not has_role(op, "admin")
    nobody = User.objects.create_user("nobody")
    assert not has_role(nobody, "viewer")
