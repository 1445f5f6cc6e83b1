from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand

from frontend.demo import (
    demo_batch_ensure,
    demo_deployment_ensure,
    demo_history_ensure,
    demo_key_ensure,
    demo_model_ensure,
    demo_users_ensure,
)


class Command(BaseCommand):
    help = "Seed the demo (idempotent); demo users get new generated passwords on every run."

    def handle(self, *args, **options):
        logins_path = settings.DATA_DIR / "demo-logins.txt"
        logins = demo_users_ensure(logins_path)
        model = demo_model_ensure()
        self.stdout.write(f"Demo model: {model.name} ({model.versions.count()} versions)")
        name, created = demo_deployment_ensure(model)
        if created:
            self.stdout.write(
                f"Deployment {name} is rolling out v1 (the worker builds and starts it)."
            )
        key, issued = demo_key_ensure(deployment_name=name, logins_path=logins_path)
        self.stdout.write(
            f"Gateway key for {name} ({'new' if issued else 'kept'}; also in {logins_path}). Try:\n"
            f"  curl -s -X POST {settings.MODELYARD_GATEWAY_URL}/d/{name}/predict "
            f"-H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
            '-d \'{"instances": [{"tenure_months": 3, "monthly_charges": 90, '
            '"support_calls": 5, "contract_years": 0}]}\''
        )
        history = demo_history_ensure(deployment_name=name)
        if history["rollups"]:
            self.stdout.write(
                f"Dashboard history for {name} (synthetic, the last 3 days: v1, then v2 for "
                f"18 h until a rollback): {history['rollups']} minute roll-ups, "
                f"{history['drift_windows']} drift windows, "
                f"{history['resource_samples']} resource samples"
            )
        job_id = demo_batch_ensure(model)
        if job_id:
            self.stdout.write(
                f"Batch job {job_id} queued: 1,000 customers scored by churn@champion "
                "(the worker runs it)"
            )
        self.stdout.write("Demo logins (user, role, password) — also in " + str(logins_path))
        for username, role, password in logins:
            self.stdout.write(f"  {username:8} {role:15} {password}")
