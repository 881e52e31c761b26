"""Idempotency-Key records (agents/idempotency.py) and the schedule that prunes expired ones."""

from django.db import migrations, models

PRUNE_SCHEDULE = "flotilla-idempotency-prune"


def create_prune_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.update_or_create(
        name=PRUNE_SCHEDULE,
        defaults={
            "func": "agents.idempotency.idempotent_requests_prune",
            "schedule_type": "H",
            "repeats": -1,
        },
    )


def delete_prune_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name=PRUNE_SCHEDULE).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0005_event_kind_network"),
        ("django_q", "0014_schedule_cluster"),
    ]

    operations = [
        migrations.CreateModel(
            name="IdempotentRequest",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("principal", models.CharField(max_length=200)),
                ("key", models.CharField(max_length=255)),
                ("endpoint", models.CharField(max_length=200)),
                (
                    "fingerprint",
                    models.CharField(
                        help_text="SHA-256 of the canonical JSON body.", max_length=64
                    ),
                ),
                ("response_status", models.PositiveSmallIntegerField(blank=True, null=True)),
                ("response_body", models.TextField(blank=True)),
                ("created_at", models.DateTimeField(auto_now_add=True, db_index=True)),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(
                        fields=("principal", "key"), name="idempotency_key_once_per_principal"
                    )
                ],
            },
        ),
        migrations.RunPython(create_prune_schedule, delete_prune_schedule),
    ]
