from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from accounts.choices import Role
from accounts.services import token_create, user_create
from core.errors import DomainError


class Command(BaseCommand):
    help = "Create a user with a role; with --token, print a new API token as the last line."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=Role.values)
        parser.add_argument("--password", help="omit for an API-only account")
        parser.add_argument("--email", default="")
        parser.add_argument("--token", action="store_true", help="also issue an API token")
        parser.add_argument("--token-name", default="cli")

    def handle(self, *args, **options) -> None:
        try:
            user = user_create(
                username=options["username"],
                role=options["role"],
                password=options["password"],
                email=options["email"],
            )
            self.stdout.write(f"Created user {user.username} with role {user.role}.")
            if options["token"]:
                issued = token_create(user=user, name=options["token_name"])
                self.stdout.write(f"API token {issued.token.name!r} (shown once):")
                self.stdout.write(issued.key)
        except DomainError as exc:
            raise CommandError(exc.message) from exc
