"""The periodic dispatcher tick: a django-q2 schedule, created (or updated) once per migrate."""

from django.db import migrations

SCHEDULE_NAME = "flotilla-projects-tick"


def create_tick(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name=SCHEDULE_NAME,
        defaults={
            "func": "taskqueue.tasks.projects_tick",
            "schedule_type": "I",
            "minutes": 1,
            "repeats": -1,
        },
    )


def delete_tick(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name=SCHEDULE_NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("taskqueue", "0001_initial"),
        ("django_q", "0014_schedule_cluster"),
    ]

    operations = [migrations.RunPython(create_tick, delete_tick)]
