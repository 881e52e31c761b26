"""One dispatcher tick now: settle what a dead worker left behind, then dispatch every project.

Run it when a hub starts (after ``reconcile``); the django-q2 schedule
``flotilla-projects-tick`` runs the same thing every minute.
"""

import json

from django.core.management.base import BaseCommand

from taskqueue.dispatcher import projects_tick


class Command(BaseCommand):
    help = "Recover and dispatch every open project once; prints a JSON report."

    def handle(self, *args: object, **options: object) -> None:
        self.stdout.write(json.dumps(projects_tick()))
