from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("monitoring", "0004_data_quality_and_accuracy_guard"),
    ]

    operations = [
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
                    ("retrain.requested", "Retrain Requested"),
                ],
                max_length=32,
            ),
        ),
    ]
