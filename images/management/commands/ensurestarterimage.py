"""``manage.py ensurestarterimage``: give a new machine ``busybox:latest`` from busybox-static, offline."""

import os

from django.core.management.base import BaseCommand, CommandError

from images import services
from project.engine import get_engine
from runtime import starter


class Command(BaseCommand):
    help = "Create the offline starter image busybox:latest from the host's busybox-static if it is missing."

    def handle(self, *args, **options):
        if not os.path.exists(starter.BUSYBOX):
            raise CommandError(f"{starter.BUSYBOX} is missing: apt-get install busybox-static")
        record = starter.ensure_starter_image(get_engine().images)
        if record is None:
            self.stdout.write(f"Image {starter.STARTER_REFERENCE} exists.")
            return
        services.sync_image(record)
        self.stdout.write(f"Created the starter image {starter.STARTER_REFERENCE} ({record.short_id}) from "
                          f"{starter.BUSYBOX}.")
