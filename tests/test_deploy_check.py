"""`manage.py check --deploy` is clean with the production environment docs/scaling.md documents."""

import os
import subprocess
import sys

from tests.conftest import ROOT

PRODUCTION_ENV = {
    "FLOTILLA_ENV": "production",
    "SECRET_KEY": "Vq3s9-" + "x7Lk2pR8mZ4tW1nB6cY0dF5gH9jK3qE7uI2oA8sD4fG6hJ1kL5",
    "FLOTILLA_FEDERATION_KEY": "federation-" + "Qw8eR4tY2uI6oP0aS3dF7gH1jK5lZ9xC",
    "ALLOWED_HOSTS": "hub.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://hub.example.com",
    "FLOTILLA_METRICS_TOKEN": "metrics-" + "m" * 32,
}


def manage(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    ours = ("FLOTILLA_", "SECRET_KEY", "DJANGO_", "ALLOWED_HOSTS")
    environ = {key: value for key, value in os.environ.items() if not key.startswith(ours)}
    environ.update(
        DJANGO_SETTINGS_MODULE="orchestrator_site.settings", DATA_DIR=str(tmp_path), **env
    )
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_deploy_check_gives_no_warning_with_the_documented_production_environment(tmp_path):
    done = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING", **PRODUCTION_ENV)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout


def test_production_refuses_a_secret_key_the_deploy_check_would_call_weak(tmp_path):
    weak = {**PRODUCTION_ENV, "SECRET_KEY": "a" * 40}
    done = manage(tmp_path, "check", **weak)
    assert done.returncode != 0
    assert "SECRET_KEY must be at least 50 characters" in done.stderr
