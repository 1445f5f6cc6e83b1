from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("deployments", "0003_client_deployment_follow_alias"),
    ]

    operations = [
        migrations.AddField(
            model_name="deployment",
            name="batch_max_latency_ms",
            field=models.PositiveIntegerField(default=10),
        ),
        migrations.AddField(
            model_name="deployment",
            name="batch_max_size",
            field=models.PositiveIntegerField(default=32),
        ),
        migrations.AddField(
            model_name="deployment",
            name="replicas_max",
            field=models.PositiveSmallIntegerField(default=1),
        ),
        migrations.AddField(
            model_name="deployment",
            name="replicas_min",
            field=models.PositiveSmallIntegerField(default=1),
        ),
        migrations.AddField(
            model_name="deployment",
            name="scale_down_seconds",
            field=models.PositiveIntegerField(default=300),
        ),
        migrations.AddField(
            model_name="deployment",
            name="scale_target_inflight",
            field=models.FloatField(default=8.0),
        ),
        migrations.AddField(
            model_name="deployment",
            name="scale_up_seconds",
            field=models.PositiveIntegerField(default=15),
        ),
        migrations.AddField(
            model_name="deployment",
            name="workers",
            field=models.PositiveSmallIntegerField(default=1),
        ),
        migrations.AddConstraint(
            model_name="deployment",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("replicas_max__gte", models.F("replicas_min")), ("replicas_min__gte", 1)
                ),
                name="deployments_replicas_range",
            ),
        ),
    ]
