from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("deployments", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="rollout",
            name="alias",
            field=models.CharField(blank=True, max_length=64),
        ),
    ]
