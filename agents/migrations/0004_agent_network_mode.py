"""``Agent.network`` becomes a mode: ``off``, ``allowlist`` or ``on``.

The old boolean is copied into a new column rather than altered in place,
so that every database converts it the same way: True becomes "on", False
becomes "off".
"""

from django.db import migrations, models


def network_to_mode(apps, schema_editor) -> None:
    agent = apps.get_model("agents", "Agent")
    agent.objects.filter(network=True).update(network_mode="on")


def mode_to_network(apps, schema_editor) -> None:
    agent = apps.get_model("agents", "Agent")
    agent.objects.exclude(network_mode="off").update(network=True)


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0003_claude_usage"),
    ]

    operations = [
        migrations.AddField(
            model_name="agent",
            name="network_mode",
            field=models.CharField(
                choices=[("off", "Off"), ("allowlist", "Allowlist"), ("on", "On")],
                default="off",
                max_length=10,
            ),
        ),
        migrations.RunPython(network_to_mode, mode_to_network),
        migrations.RemoveField(model_name="agent", name="network"),
        migrations.RenameField(model_name="agent", old_name="network_mode", new_name="network"),
    ]
