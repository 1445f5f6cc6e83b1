from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("deployments", "0005_build_rollout_lease"),
    ]

    operations = [
        migrations.AddField(
            model_name="slot",
            name="replicas",
            field=models.JSONField(blank=True, default=list),
        ),
    ]
