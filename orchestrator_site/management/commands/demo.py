"""A demo a new user can click through: a sample repository, an admin and a few agents."""

import secrets
import subprocess
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from rest_framework.authtoken.models import Token

from agents.errors import AgentError
from agents.services import SpawnRequest, agent_spawn

SAMPLE_FILES = {
    "README.md": "# Sample project\n\nA tiny repository for the Flotilla demo.\n",
    "calc.py": "def add(a, b):\n    return a + b\n",
    "test_calc.py": "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n",
}

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
    help = "Create a sample repository, an admin user with an API token, and demo agents."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--no-agents", action="store_true", help="only the repository and user")

    def handle(self, *args, no_agents: bool, **options) -> None:
        demo_dir = Path(settings.DATA_DIR) / "demo"
        repository = self._sample_repository(demo_dir)
        password, token = self._admin(demo_dir)
        self.stdout.write(f"sample repository: {repository}")
        self.stdout.write(f"admin login:       admin / {password}")
        self.stdout.write(f"API token:         {token}")
        if no_agents:
            return
        for task_id, description, script in DEMO_AGENTS:
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

    def _sample_repository(self, demo_dir: Path) -> Path:
        remote = demo_dir / "sample.git"
        if (remote / "HEAD").exists():
            return remote
        seed = demo_dir / "sample-seed"
        demo_dir.mkdir(parents=True, exist_ok=True)
        self._git(demo_dir, "init", "--quiet", "--bare", "--initial-branch=main", str(remote))
        self._git(demo_dir, "init", "--quiet", "--initial-branch=main", str(seed))
        for name, content in SAMPLE_FILES.items():
            (seed / name).write_text(content)
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
