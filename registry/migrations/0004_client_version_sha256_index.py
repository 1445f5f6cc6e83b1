from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("registry", "0003_pages_verbose_names")]

    operations = [
        migrations.AddIndex(
            model_name="modelversion",
            index=models.Index(
                fields=["model", "artifact_sha256"], name="registry_version_model_sha"
            ),
        ),
    ]
