"""`manage.py sandbox_image` builds the docker sandbox image locally, once, or says why not."""

import subprocess
import sys

import pytest

from agents.sandboxes.base import SandboxSpec, SandboxUnavailable
from tests.conftest import ROOT, subprocess_env


def sandbox_image(*args: str, **env: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "manage.py", "sandbox_image", *args]
    env = {**subprocess_env(), **env}
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)


def test_sandbox_image_without_an_engine_fails_with_one_clear_line():
    done = sandbox_image(DOCKER_HOST="unix:///nonexistent/docker.sock")

    assert done.returncode == 1
    assert "the Docker engine is not reachable" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.docker
def test_sandbox_image_is_built_once_and_then_left_alone():
    image = "flotilla-sandbox-test:latest"
    try:
        first = sandbox_image("--rebuild", FLOTILLA_DOCKER_IMAGE=image)
        second = sandbox_image(FLOTILLA_DOCKER_IMAGE=image)

        assert first.returncode == 0 and "built the sandbox image" in first.stdout
        assert second.returncode == 0 and "is up to date" in second.stdout
        inspect = subprocess.run(
            [
                "docker",
                "image",
                "inspect",
                image,
                "--format",
                "{{.Config.User}} {{.Config.WorkingDir}}",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        assert inspect.stdout.split() == ["65534:65534", "/workspace"]
    finally:
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


@pytest.mark.docker
def test_starting_a_sandbox_without_its_image_names_the_command_to_build_it(settings, tmp_path):
    from agents.sandboxes.docker import DockerSandbox

    settings.FLOTILLA_DOCKER_IMAGE = "flotilla-no-such-image:latest"

    with pytest.raises(SandboxUnavailable, match="manage.py sandbox_image"):
        DockerSandbox().start(SandboxSpec(agent_id="no-image", workspace=tmp_path))
