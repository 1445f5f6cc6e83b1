from django.db import migrations, models
from django.db.models import F


def every_chunk_staged(apps, schema_editor):
    # Jobs staged before this field existed staged every chunk before they ran.
    apps.get_model("batch", "BatchJob").objects.update(chunks_staged=F("chunks_total"))


class Migration(migrations.Migration):
    dependencies = [("batch", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="batchjob",
            name="chunks_staged",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.RunPython(every_chunk_staged, migrations.RunPython.noop),
    ]
