"""Build the docker sandbox image locally; no registry is needed or reachable."""

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.sandboxes.base import SandboxError


class Command(BaseCommand):
    help = (
        "Build the docker sandbox image (FLOTILLA_DOCKER_IMAGE) from an empty root; the "
        "host's system directories are bound read-only at run time. Does nothing when an "
        "identical image exists."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rebuild", action="store_true", help="build even if it exists")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            from agents.sandboxes.docker import docker_image_build

            image, built = docker_image_build(rebuild=options["rebuild"])
        except ImportError as error:
            raise CommandError(f"the docker SDK is not installed: {error}") from None
        except SandboxError as error:
            raise CommandError(str(error)) from None
        if built:
            self.stdout.write(f"built the sandbox image {image}")
        else:
            self.stdout.write(f"the sandbox image {settings.FLOTILLA_DOCKER_IMAGE} is up to date")
