"""``manage.py createtoken USER``: create an API token and print it on the last line."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from project.models import ApiToken


class Command(BaseCommand):
    help = "Create an API token for USER and print it (on the last line of the output)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--description", default="created with manage.py createtoken")

    def handle(self, *args, username, description, **options):
        try:
            user = get_user_model().objects.get(username=username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"no such user: {username}") from None
        if not user.is_active:
            raise CommandError(f"user {username} is inactive")
        _, clear = ApiToken.objects.create_token(user, description)
        self.stdout.write(f"API token for {username} (shown once; send it as 'Authorization: Bearer <token>'):")
        self.stdout.write(clear)
