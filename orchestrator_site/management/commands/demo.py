"""A demo a new user can click through: sample repositories, an admin and a few agents."""

import secrets
import subprocess
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from rest_framework.authtoken.models import Token

from agents.errors import AgentError
from agents.services import SpawnRequest, agent_spawn
from agents.workspace import repository_problem

SAMPLE_FILES = {
    "README.md": "# Sample project\n\nA tiny repository for the Flotilla demo.\n",
    "calc.py": "def add(a, b):\n    return a + b\n",
    "test_calc.py": "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n",
}

# A project with a real dependency: its [setup] installs PyYAML from PyPI (on
# the hub's default egress allowlist) into .deps before the agent starts, and
# its tests gate runs with it. The next agent on it restores .deps from the
# setup cache instead (docs/setup.md).
SETUP_SAMPLE_FILES = {
    "README.md": "# Settings loader\n\nReads YAML settings; needs PyYAML (see requirements.txt).\n",
    "requirements.txt": "PyYAML==6.0.2\n",
    "settings_loader.py": (
        "import yaml\n\n\ndef load(text):\n    return yaml.safe_load(text) or {}\n"
    ),
    "test_settings_loader.py": (
        "from settings_loader import load\n\n\ndef test_load():\n"
        '    assert load("debug: true") == {"debug": True}\n'
    ),
    ".flotilla.toml": (
        "[setup]\n"
        "# Runs in the agent's sandbox before the agent, with network allowlist;\n"
        "# .deps is left out of every commit and cached for the next agent.\n"
        'commands = ["python -m pip install --disable-pip-version-check --no-input '
        '--retries 1 --timeout 20 --target .deps -r requirements.txt"]\n\n'
        "[gates]\n"
        'lint = "ruff check {changed_files}"\n'
        'tests = "PYTHONPATH=.deps python -m pytest -q"\n'
    ),
}
SETUP_AGENT = (
    "demo-setup",
    "Its repository's [setup] installs PyYAML from PyPI first (and fails saying so when "
    "the registry cannot be reached); adds a test that the tests gate runs with it.",
    "printf '%s\\n' '' '' 'def test_load_list():' "
    "'    assert load(\"- 1\\n- 2\") == [1, 2]' >> test_settings_loader.py; "
    "echo 'added test_load_list'",
)

DEMO_AGENTS = [
    (
        "demo-docs",
        "Writes a changelog and finishes: its branch is pushed.",
        "echo '## 0.1.0' > CHANGELOG.md; echo 'wrote CHANGELOG.md'",
    ),
    (
        "demo-failing",
        "Exits with status 2: ends failed, output kept.",
        "echo 'checking something...'; echo 'nope' >&2; exit 2",
    ),
    (
        "demo-long",
        "Runs for ten minutes: try its kill button.",
        'for i in $(seq 600); do echo "step $i"; sleep 1; done',
    ),
]


class Command(BaseCommand):
    help = "Create sample repositories, an admin user with an API token, and demo agents."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--no-agents", action="store_true", help="only the repository and user")
        parser.add_argument(
            "--with-setup",
            action="store_true",
            help="also spawn an agent on the sample whose [setup] installs PyYAML from PyPI",
        )

    def handle(self, *args: object, no_agents: bool, with_setup: bool, **options: object) -> None:
        demo_dir = Path(settings.DATA_DIR) / "demo"
        repository = self._sample_repository(demo_dir, "sample", SAMPLE_FILES)
        setup_repository = self._sample_repository(demo_dir, "sample-setup", SETUP_SAMPLE_FILES)
        problem = repository_problem(str(repository))
        if problem:
            # The hub serves local repositories only below the operator's
            # roots; `make hub` names the demo's directory there.
            raise CommandError(
                f"the sample repository cannot be used: {problem}; "
                f"set FLOTILLA_LOCAL_REPOSITORY_ROOTS={demo_dir} for the demo hub"
            )
        password, token = self._admin(demo_dir)
        self.stdout.write(f"sample repository: {repository}")
        self.stdout.write(f"with [setup]:      {setup_repository}")
        self.stdout.write(f"admin login:       admin / {password}")
        self.stdout.write(f"API token:         {token}")
        if no_agents:
            return
        agents = [(repository, *agent) for agent in DEMO_AGENTS]
        if with_setup:
            # Spawning reaches no registry: the agent's setup does, in its
            # sandbox, and a registry out of reach fails that agent alone.
            agents.append((setup_repository, *SETUP_AGENT))
        for sample, task_id, description, script in agents:
            self._spawn(sample, task_id, description, script)

    def _spawn(self, repository: Path, task_id: str, description: str, script: str) -> None:
        request = SpawnRequest(
            task_id=task_id,
            agent_type="worker",
            runtime="script",
            repository=str(repository),
            base_branch="main",
            script=script,
            instructions=description,
            timeout_s=900,
        )
        try:
            agent = agent_spawn(request=request, requested_by="demo")
        except AgentError as error:
            raise CommandError(f"cannot spawn demo agents: {error}") from None
        self.stdout.write(f"spawned {task_id}: {agent.id} ({description})")

    def _sample_repository(self, demo_dir: Path, name: str, files: dict[str, str]) -> Path:
        remote = demo_dir / f"{name}.git"
        if (remote / "HEAD").exists():
            return remote
        seed = demo_dir / f"{name}-seed"
        demo_dir.mkdir(parents=True, exist_ok=True)
        self._git(demo_dir, "init", "--quiet", "--bare", "--initial-branch=main", str(remote))
        self._git(demo_dir, "init", "--quiet", "--initial-branch=main", str(seed))
        for relative, content in files.items():
            (seed / relative).write_text(content)
        self._git(seed, "add", "--all")
        self._git(
            seed,
            "-c",
            "user.name=Flotilla demo",
            "-c",
            "user.email=demo@localhost",
            "commit",
            "--quiet",
            "-m",
            "Sample project",
        )
        self._git(seed, "push", "--quiet", str(remote), "main")
        return remote

    def _git(self, cwd: Path, *args: str) -> None:
        result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
        if result.returncode != 0:
            raise CommandError(f"git {args[0]} failed: {result.stderr.strip()}")

    def _admin(self, demo_dir: Path) -> tuple[str, str]:
        credentials = demo_dir / "admin-password"
        users = get_user_model().objects
        admin = users.filter(username="admin").first()
        if admin is None:
            password = secrets.token_urlsafe(12)
            admin = users.create_superuser("admin", "admin@localhost", password)
            credentials.write_text(password)
            credentials.chmod(0o600)
        password = credentials.read_text() if credentials.exists() else "(unchanged)"
        token, _ = Token.objects.get_or_create(user=admin)
        return password, token.key
