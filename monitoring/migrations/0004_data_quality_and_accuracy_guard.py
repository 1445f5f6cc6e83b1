from __future__ import annotations

import django.contrib.postgres.fields
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("monitoring", "0003_prediction_log"),
    ]

    operations = [
        migrations.AddField(
            model_name="driftfeature",
            name="new_category_rate",
            field=models.FloatField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="driftfeature",
            name="out_of_range_rate",
            field=models.FloatField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="driftfeature",
            name="quality_issues",
            field=models.JSONField(blank=True, default=list),
        ),
        migrations.AddField(
            model_name="driftfeature",
            name="type_mismatch_rate",
            field=models.FloatField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="driftwindow",
            name="data_quality",
            field=models.JSONField(blank=True, null=True),
        ),
        migrations.AlterField(
            model_name="alert",
            name="kind",
            field=models.CharField(
                choices=[
                    ("rollout.done", "Rollout Done"),
                    ("rollout.failed", "Rollout Failed"),
                    ("rollback", "Rollback"),
                    ("drift.detected", "Drift Detected"),
                    ("prediction.drift", "Prediction Drift"),
                    ("data_quality.breach", "Data Quality"),
                    ("guard.breach", "Guard Breach"),
                ],
                max_length=32,
            ),
        ),
        migrations.AlterField(
            model_name="guardbreach",
            name="rules",
            field=django.contrib.postgres.fields.ArrayField(
                base_field=models.CharField(
                    choices=[
                        ("error_rate", "Error Rate"),
                        ("p99_ms", "P99 Latency"),
                        ("drift", "Drift"),
                        ("cost_per_prediction", "Cost Per Prediction"),
                        ("accuracy", "Accuracy"),
                    ],
                    max_length=32,
                ),
                size=None,
            ),
        ),
    ]
