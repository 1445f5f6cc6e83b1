from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("deployments", "0002_client_rollout_alias")]

    operations = [
        migrations.AddField(
            model_name="deployment",
            name="follow_alias",
            field=models.CharField(blank=True, max_length=64),
        ),
    ]
