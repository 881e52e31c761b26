from django.apps import AppConfig


class TaskqueueConfig(AppConfig):
    name = "taskqueue"
    verbose_name = "Projects"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from agents.signals import agent_finished
        from taskqueue.handlers import on_agent_finished

        agent_finished.connect(on_agent_finished, dispatch_uid="taskqueue.agent_finished")
