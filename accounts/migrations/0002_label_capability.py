from __future__ import annotations

import django.contrib.postgres.fields
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
    ]

    operations = [
        migrations.AlterField(
            model_name="apitoken",
            name="scopes",
            field=django.contrib.postgres.fields.ArrayField(
                base_field=models.CharField(
                    choices=[
                        ("view", "View"),
                        ("manage_models", "Manage Models"),
                        ("upload", "Upload"),
                        ("submit", "Submit"),
                        ("review", "Review"),
                        ("set_alias", "Set Alias"),
                        ("deploy", "Deploy"),
                        ("run_batch", "Run Batch"),
                        ("label", "Label"),
                        ("manage_tokens", "Manage Tokens"),
                        ("admin", "Admin"),
                    ],
                    max_length=32,
                ),
                blank=True,
                default=list,
                size=None,
            ),
        ),
    ]
