from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand

from frontend.demo import demo_model_ensure, demo_users_ensure


class Command(BaseCommand):
    help = "Seed the demo (idempotent); demo users get new generated passwords on every run."

    def handle(self, *args, **options):
        logins_path = settings.DATA_DIR / "demo-logins.txt"
        logins = demo_users_ensure(logins_path)
        model = demo_model_ensure()
        self.stdout.write(f"Demo model: {model.name} ({model.versions.count()} versions)")
        self.stdout.write("Demo logins (user, role, password) — also in " + str(logins_path))
        for username, role, password in logins:
            self.stdout.write(f"  {username:8} {role:15} {password}")
