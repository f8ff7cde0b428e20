"""``manage.py ensureadmin``: create the first admin account once.

The name and password come from BERTH_ADMIN_USER / BERTH_ADMIN_PASSWORD; without a password one
is generated and printed once. An existing account is left as it is.
"""

import os
import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand

from project.choices import RoleChoices


class Command(BaseCommand):
    help = "Create the admin account from BERTH_ADMIN_USER / BERTH_ADMIN_PASSWORD if it does not exist."

    def handle(self, *args, **options):
        User = get_user_model()
        username = os.getenv("BERTH_ADMIN_USER", "admin")
        if User.objects.filter(username=username).exists():
            self.stdout.write(f"Admin account '{username}' exists.")
            return
        password = os.getenv("BERTH_ADMIN_PASSWORD")
        generated = not password
        if generated:
            password = secrets.token_urlsafe(12)
        user = User.objects.create_superuser(username=username, email="", password=password)
        user.groups.add(Group.objects.get_or_create(name=RoleChoices.ADMIN)[0])
        if generated:
            self.stdout.write(self.style.WARNING(
                f"Created admin account '{username}' with password: {password}\n"
                "  (shown once; change it in the admin, or set BERTH_ADMIN_PASSWORD before the first run)"
            ))
        else:
            self.stdout.write(f"Created admin account '{username}' (password from BERTH_ADMIN_PASSWORD).")
