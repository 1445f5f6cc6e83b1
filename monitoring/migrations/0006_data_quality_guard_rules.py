from __future__ import annotations

import django.contrib.postgres.fields
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("monitoring", "0005_retrain_requested"),
    ]

    operations = [
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
                        ("missing_rate_increase", "Missing Rate"),
                        ("out_of_range_rate", "Out Of Range"),
                        ("new_category_rate", "New Category"),
                    ],
                    max_length=32,
                ),
                size=None,
            ),
        ),
    ]
