"""Settings for a Flotilla hub, read from the environment.

Every value an operator may change is read here through the strict helpers in
``orchestrator_site.env``; see the configuration table in README.md.
"""

import os
import re
import secrets
import socket
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from orchestrator_site.env import (
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent

FLOTILLA_ENV = env_choice("FLOTILLA_ENV", "development", ["development", "production"])
PRODUCTION = FLOTILLA_ENV == "production"
DEBUG = env_bool("DEBUG", default=False)

DATA_DIR = Path(env_str("DATA_DIR", str(BASE_DIR / "var")) or "").expanduser().resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    configured = env_str("SECRET_KEY")
    if configured:
        if len(configured) < 32:
            raise ImproperlyConfigured("SECRET_KEY must be at least 32 characters long")
        # Django's deploy check (security.W009) wants 50 characters and 5 distinct ones.
        if PRODUCTION and (len(configured) < 50 or len(set(configured)) < 5):
            raise ImproperlyConfigured(
                "SECRET_KEY must be at least 50 characters (5 distinct) "
                "when FLOTILLA_ENV=production"
            )
        return configured
    if PRODUCTION:
        raise ImproperlyConfigured("SECRET_KEY must be set when FLOTILLA_ENV=production")
    # A development hub keeps a generated key in DATA_DIR so sessions and
    # tokens survive restarts without the operator having to invent one.
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "django_q",
    "channels",
    "audit",
    "gates",
    "agents",
    "killswitch",
    "taskqueue",
    "federation",
    "dashboard",
    "orchestrator_site",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "orchestrator_site.urls"
ASGI_APPLICATION = "orchestrator_site.asgi.application"
WSGI_APPLICATION = "orchestrator_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def _databases() -> dict:
    url = env_str("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'flotilla.sqlite3'}"
    try:
        config = dj_database_url.parse(url, conn_max_age=0)
    except ValueError as error:
        raise ImproperlyConfigured(f"DATABASE_URL is not a database URL: {error}") from None
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # WAL lets readers and one writer proceed together; IMMEDIATE takes
        # the write lock at BEGIN so two writers queue on the busy timeout
        # instead of failing with "database is locked" half-way through.
        config["OPTIONS"] = {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
            "PRAGMA busy_timeout=30000",
        }
    elif config["ENGINE"] != "django.db.backends.postgresql":
        raise ImproperlyConfigured("DATABASE_URL must be a sqlite:// or postgres:// URL")
    return {"default": config}


DATABASES = _databases()
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/dashboard/"
# WhiteNoise serves /static/ from daphne; with finders on it also works
# before (or without) collectstatic, and it expects STATIC_ROOT to exist.
WHITENOISE_USE_FINDERS = True
STATIC_ROOT.mkdir(parents=True, exist_ok=True)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "orchestrator_site.schema.ViewScopedAutoSchema",
    "EXCEPTION_HANDLER": "orchestrator_site.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Flotilla hub API",
    "DESCRIPTION": "Spawn, watch and kill AI coding agents.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema and docs are for API users (README); drf-spectacular's default is anyone.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "COMPONENT_SPLIT_REQUEST": True,
    # The spawn APIs of agents and federation share these choice sets.
    "ENUM_NAME_OVERRIDES": {
        "AgentTypeEnum": "agents.models.AgentType",
        "RuntimeEnum": "agents.models.Runtime",
        "PeerAgentTypeEnum": ["worker", "reviewer", "tester"],
        "PeerRuntimeEnum": ["claude", "script"],
    },
}

# Redis is optional: without REDIS_URL the django-q2 broker is the database,
# so a single machine needs no server at all.
REDIS_URL = env_str("REDIS_URL") or None
FLOTILLA_AGENT_MAX_RUNTIME_S = env_int("FLOTILLA_AGENT_MAX_RUNTIME_S", 4 * 3600, minimum=60)
Q_CLUSTER = {
    "name": "flotilla",
    "workers": env_int("FLOTILLA_WORKERS", 8, minimum=1),
    "recycle": 200,
    # An agent run may take hours; its own timeout is enforced by the
    # runtime, this one only stops a worker that hangs past every limit.
    "timeout": FLOTILLA_AGENT_MAX_RUNTIME_S,
    "retry": FLOTILLA_AGENT_MAX_RUNTIME_S + 300,
    "max_attempts": 1,
    "ack_failures": True,
    "catch_up": False,
    # How often an idle ORM broker looks for new tasks: the main part of the
    # spawn latency on a single machine, and a trivial query.
    "poll": 0.02,
    "save_limit": 1000,
    "label": "Task queue",
    # django-q2 reads this key whenever the Q_CLUSTER_NAME environment variable
    # names a queue of its own (a separate hub's queue, as the crash tests use).
    "ALT_CLUSTERS": {},
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

CHANNEL_LAYERS = {
    "default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 1000}}
}
# The dashboard relay tails AgentEvent in every web process (dashboard/relay.py).
FLOTILLA_DASHBOARD_RELAY_INTERVAL_S = env_float(
    "FLOTILLA_DASHBOARD_RELAY_INTERVAL_S", 0.05, minimum=0.005
)
FLOTILLA_DASHBOARD_RELAY_BATCH = env_int("FLOTILLA_DASHBOARD_RELAY_BATCH", 1000, minimum=10)
FLOTILLA_DASHBOARD_GAP_WAIT_S = env_float("FLOTILLA_DASHBOARD_GAP_WAIT_S", 1.0, minimum=0.0)
# Project pages and banners: each web process polls what its browsers watch (dashboard/watch.py).
FLOTILLA_DASHBOARD_WATCH_INTERVAL_S = env_float(
    "FLOTILLA_DASHBOARD_WATCH_INTERVAL_S", 0.25, minimum=0.02
)

# --- Flotilla ---------------------------------------------------------------

FLOTILLA_NODE_NAME = env_str("FLOTILLA_NODE_NAME") or socket.gethostname()
MAX_CONCURRENT_AGENTS = env_int("MAX_CONCURRENT_AGENTS", 20, minimum=1)
FLOTILLA_SANDBOX_BACKEND = env_choice(
    "FLOTILLA_SANDBOX_BACKEND", "bwrap", ["bwrap", "docker", "process"]
)
FLOTILLA_SANDBOX_BACKENDS = {
    "bwrap": "agents.sandboxes.bwrap.BwrapSandbox",
    "process": "agents.sandboxes.process.ProcessSandbox",
    "docker": "agents.sandboxes.docker.DockerSandbox",
    # An agent that runs on a peer hub; its kill is a signed agent.kill.
    "remote": "federation.sandbox.RemoteSandbox",
}
FLOTILLA_ALLOW_PROCESS_SANDBOX = env_bool("FLOTILLA_ALLOW_PROCESS_SANDBOX", default=False)
FLOTILLA_SANDBOX_UID = env_int("FLOTILLA_SANDBOX_UID", 65534, minimum=1)
FLOTILLA_SANDBOX_MEMORY_MB = env_int("FLOTILLA_SANDBOX_MEMORY_MB", 1024, minimum=16)
FLOTILLA_SANDBOX_PIDS = env_int("FLOTILLA_SANDBOX_PIDS", 256, minimum=8)
FLOTILLA_SANDBOX_CPUS = env_float("FLOTILLA_SANDBOX_CPUS", 1.0, minimum=0.01)
# Extra host paths bound read-only into every bwrap sandbox at the same place,
# for toolchains that live outside /usr. They must be reachable by the
# sandbox user: a path under /root (mode 700) is not.
FLOTILLA_SANDBOX_RO_BINDS = env_list("FLOTILLA_SANDBOX_RO_BINDS", [])
FLOTILLA_SANDBOX_PATH = env_str("FLOTILLA_SANDBOX_PATH", "/usr/local/bin:/usr/bin:/bin")
# The docker sandbox: the image `manage.py sandbox_image` builds locally, the
# engine's API timeout, and how many started containers wait for spawns.
FLOTILLA_DOCKER_IMAGE = env_str("FLOTILLA_DOCKER_IMAGE", "flotilla-sandbox:latest")
FLOTILLA_DOCKER_TIMEOUT_S = env_int("FLOTILLA_DOCKER_TIMEOUT_S", 30, minimum=1)
FLOTILLA_DOCKER_WARM_POOL = env_int("FLOTILLA_DOCKER_WARM_POOL", 0, minimum=0)
# How often the reconciler schedule runs (manage.py reconcile creates it).
FLOTILLA_RECONCILE_EVERY_MINUTES = env_int("FLOTILLA_RECONCILE_EVERY_MINUTES", 1, minimum=1)
# Several nodes (docs/scaling.md): a kill of an agent on another node is sent
# there by this router, and each worker node's kill listener sweeps this often
# for kills that no notification brought.
FLOTILLA_NODE_KILL_ROUTER = "agents.noderouting.notify_node"
FLOTILLA_KILL_SWEEP_S = env_float("FLOTILLA_KILL_SWEEP_S", 0.5, minimum=0.05)
# How old a queued agent must be before the reconciler looks for its task in the queue.
FLOTILLA_RECONCILE_QUEUED_GRACE_S = env_int("FLOTILLA_RECONCILE_QUEUED_GRACE_S", 30, minimum=1)
# Prometheus scrapes /metrics with this bearer token; staff users may read it too.
FLOTILLA_METRICS_TOKEN = env_str("FLOTILLA_METRICS_TOKEN") or None
FLOTILLA_CGROUP_ROOT = Path(env_str("FLOTILLA_CGROUP_ROOT", "/sys/fs/cgroup") or "")
FLOTILLA_DEFAULT_TIMEOUT_S = env_int("FLOTILLA_DEFAULT_TIMEOUT_S", 1800, minimum=1)
FLOTILLA_OUTPUT_TAIL_LINES = env_int("FLOTILLA_OUTPUT_TAIL_LINES", 40, minimum=1)
FLOTILLA_GIT_AUTHOR_NAME = env_str("FLOTILLA_GIT_AUTHOR_NAME", "Flotilla") or "Flotilla"
FLOTILLA_GIT_AUTHOR_EMAIL = (
    env_str("FLOTILLA_GIT_AUTHOR_EMAIL", "flotilla@localhost") or "flotilla@localhost"
)
FLOTILLA_GIT_TIMEOUT_S = env_int("FLOTILLA_GIT_TIMEOUT_S", 120, minimum=1)
# Repository URL schemes a spawn may name; a plain path counts as "file".
FLOTILLA_REPOSITORY_SCHEMES = env_list(
    "FLOTILLA_REPOSITORY_SCHEMES", ["file", "https", "http", "ssh", "git"]
)
# Checks run before any new agent is accepted, lowest layer first; the kill
# switch registers its "refuse while halted" guard here (DESIGN.md).
FLOTILLA_SPAWN_GUARDS = ["killswitch.guards.refuse_while_halted"]
# Admin actions on agents contributed by higher layers, by dotted path.
FLOTILLA_AGENT_ADMIN_ACTIONS = ["killswitch.admin.kill_selected_agents"]

# --- Quality gates (docs/gates.md) -------------------------------------------

# Skips every gate; each skip is audited and the health endpoint reports it.
YOLO_MODE = env_bool("YOLO_MODE", default=False)
FLOTILLA_GATE_TIMEOUT_S = env_int("FLOTILLA_GATE_TIMEOUT_S", 600, minimum=1)
FLOTILLA_COVERAGE_THRESHOLD = env_float("FLOTILLA_COVERAGE_THRESHOLD", 85.0, minimum=0)
FLOTILLA_GATES = {
    "secret_scan": "gates.checks.secret_scan.SecretScanGate",
    "lint": "gates.checks.commands.lint_gate",
    "typecheck": "gates.checks.commands.typecheck_gate",
    "tests": "gates.checks.commands.TestsGate",
    "coverage": "gates.checks.coverage.CoverageGate",
    "build": "gates.checks.commands.build_gate",
    "merge_conflicts": "gates.checks.conflicts.MergeConflictGate",
    "coordinator": "gates.checks.coordinator.CoordinatorGate",
    "ai_review": "gates.checks.ai_review.AiReviewGate",
}
# A virtualenv of gate tools (ruff, pytest, coverage) built from the system
# Python by `manage.py sandbox_toolchain`; bwrap binds it read-only and puts
# its bin first on PATH. Every directory above it must let the sandbox user
# through (o+x), so a checkout under a private home falls back to /var/lib.
_TOOLCHAIN_DEFAULT = BASE_DIR / "var" / "toolchain"
if not all(os.stat(part).st_mode & 0o001 for part in (BASE_DIR, *BASE_DIR.parents)):
    _TOOLCHAIN_DEFAULT = Path("/var/lib/flotilla/toolchain")
FLOTILLA_SANDBOX_TOOLCHAIN = Path(
    env_str("FLOTILLA_SANDBOX_TOOLCHAIN", str(_TOOLCHAIN_DEFAULT)) or ""
)
FLOTILLA_AI_REVIEW_MODEL = env_str("FLOTILLA_AI_REVIEW_MODEL", "claude-sonnet-4-6")
FLOTILLA_AI_REVIEW_APPROVE_AT = env_float("FLOTILLA_AI_REVIEW_APPROVE_AT", 0.9, minimum=0)
FLOTILLA_AI_REVIEW_MAX_TOKENS = env_int("FLOTILLA_AI_REVIEW_MAX_TOKENS", 2048, minimum=256)
FLOTILLA_AI_REVIEW_MAX_DIFF_CHARS = env_int(
    "FLOTILLA_AI_REVIEW_MAX_DIFF_CHARS", 150_000, minimum=1000
)
# The anthropic SDK client (gates/llm.py), shared by the AI review and the
# Claude runtime. Unset ANTHROPIC_BASE_URL means the SDK's default endpoint.
ANTHROPIC_API_KEY = env_str("ANTHROPIC_API_KEY") or None
ANTHROPIC_BASE_URL = env_str("ANTHROPIC_BASE_URL") or None
ANTHROPIC_TIMEOUT_S = env_float("ANTHROPIC_TIMEOUT_S", 600.0, minimum=1)
ANTHROPIC_MAX_RETRIES = env_int("ANTHROPIC_MAX_RETRIES", 2, minimum=0)
# Optional Mosaic-style coordinator asked before every push.
FLOTILLA_COORDINATOR_URL = env_str("FLOTILLA_COORDINATOR_URL") or None
FLOTILLA_COORDINATOR_TOKEN = env_str("FLOTILLA_COORDINATOR_TOKEN") or None
FLOTILLA_COORDINATOR_TIMEOUT_S = env_float("FLOTILLA_COORDINATOR_TIMEOUT_S", 30.0, minimum=0.1)
FLOTILLA_COORDINATOR_RETRIES = env_int("FLOTILLA_COORDINATOR_RETRIES", 3, minimum=0)
FLOTILLA_COORDINATOR_BACKOFF_S = env_float("FLOTILLA_COORDINATOR_BACKOFF_S", 0.5, minimum=0)

# --- Claude agents (docs/claude.md) ------------------------------------------

# Defaults for the `claude` runtime; a spawn may override model, max_tokens
# and max_turns in its options.
FLOTILLA_CLAUDE_MODEL = env_str("FLOTILLA_CLAUDE_MODEL", "claude-sonnet-4-5") or ""
FLOTILLA_CLAUDE_MAX_TOKENS = env_int("FLOTILLA_CLAUDE_MAX_TOKENS", 8192, minimum=256)
FLOTILLA_CLAUDE_MAX_TURNS = env_int("FLOTILLA_CLAUDE_MAX_TURNS", 200, minimum=1)
# Tool results longer than this are cut, with a note saying so.
FLOTILLA_CLAUDE_TOOL_RESULT_MAX_CHARS = env_int(
    "FLOTILLA_CLAUDE_TOOL_RESULT_MAX_CHARS", 20_000, minimum=1000
)
# Default and ceiling of run_command's timeout_s.
FLOTILLA_CLAUDE_COMMAND_TIMEOUT_S = env_int("FLOTILLA_CLAUDE_COMMAND_TIMEOUT_S", 600, minimum=1)
# How often a worker waiting on the model checks whether its agent was killed.
FLOTILLA_CLAUDE_CANCEL_POLL_S = env_float("FLOTILLA_CLAUDE_CANCEL_POLL_S", 0.1, minimum=0.01)


def _claude_prices() -> dict[str, dict[str, float]]:
    """USD per million tokens by model-name prefix; the longest matching prefix wins."""
    import json

    kinds = ("input", "output", "cache_write", "cache_read")
    default = {
        "claude-opus-4-6": [5, 25, 6.25, 0.5],
        "claude-opus-4-5": [5, 25, 6.25, 0.5],
        "claude-opus-4": [15, 75, 18.75, 1.5],
        "claude-sonnet-4": [3, 15, 3.75, 0.3],
        "claude-3-7-sonnet": [3, 15, 3.75, 0.3],
        "claude-haiku-4": [1, 5, 1.25, 0.1],
        "claude-3-5-haiku": [0.8, 4, 1.0, 0.08],
    }
    prices = {model: dict(zip(kinds, values, strict=True)) for model, values in default.items()}
    configured = env_str("FLOTILLA_CLAUDE_PRICES")
    if not configured:
        return prices
    try:
        extra = json.loads(configured)
        if not isinstance(extra, dict):
            raise ValueError("not an object")
        for model, price in extra.items():
            if not isinstance(price, dict) or set(price) != set(kinds):
                raise ValueError(f"{model} needs exactly {', '.join(kinds)}")
            prices[model] = {kind: float(price[kind]) for kind in kinds}
    except (ValueError, TypeError) as error:
        raise ImproperlyConfigured(
            'FLOTILLA_CLAUDE_PRICES must be JSON like {"model-prefix": {"input": 3, "output": 15, '
            f'"cache_write": 3.75, "cache_read": 0.3}}: {error}'
        ) from None
    return prices


FLOTILLA_CLAUDE_PRICES = _claude_prices()
if not any(FLOTILLA_CLAUDE_MODEL.startswith(prefix) for prefix in FLOTILLA_CLAUDE_PRICES):
    raise ImproperlyConfigured(
        f"FLOTILLA_CLAUDE_MODEL {FLOTILLA_CLAUDE_MODEL!r} has no price in FLOTILLA_CLAUDE_PRICES"
    )

# --- Federation (docs/federation.md) -----------------------------------------

FLOTILLA_INSTANCE_ID = env_str("FLOTILLA_INSTANCE_ID") or re.sub(
    r"[^A-Za-z0-9._~-]+", "-", FLOTILLA_NODE_NAME
).strip("-")
if not re.fullmatch(r"[A-Za-z0-9._~-]{1,100}", FLOTILLA_INSTANCE_ID):
    raise ImproperlyConfigured("FLOTILLA_INSTANCE_ID must be 1-100 URL-safe characters")
FLOTILLA_INSTANCE_NAME = env_str("FLOTILLA_INSTANCE_NAME") or FLOTILLA_NODE_NAME
FLOTILLA_FEDERATION_URL = (
    env_str("FLOTILLA_FEDERATION_URL", "http://127.0.0.1:8000") or ""
).rstrip("/")


def _federation_key() -> str:
    """The secret that encrypts the instance private keys at rest."""
    configured = env_str("FLOTILLA_FEDERATION_KEY")
    if configured:
        if len(configured) < 32:
            raise ImproperlyConfigured("FLOTILLA_FEDERATION_KEY must be at least 32 characters")
        if PRODUCTION and configured == SECRET_KEY:
            raise ImproperlyConfigured("FLOTILLA_FEDERATION_KEY must differ from SECRET_KEY")
        return configured
    if PRODUCTION:
        raise ImproperlyConfigured(
            "FLOTILLA_FEDERATION_KEY must be set when FLOTILLA_ENV=production"
        )
    key_file = DATA_DIR / "federation_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(48))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


FLOTILLA_FEDERATION_KEY = _federation_key()
FLOTILLA_FEDERATION_CONNECT_TIMEOUT_S = env_float(
    "FLOTILLA_FEDERATION_CONNECT_TIMEOUT_S", 3.0, minimum=0.1
)
FLOTILLA_FEDERATION_TIMEOUT_S = env_float("FLOTILLA_FEDERATION_TIMEOUT_S", 15.0, minimum=0.1)
FLOTILLA_FEDERATION_KEY_GRACE_DAYS = env_int("FLOTILLA_FEDERATION_KEY_GRACE_DAYS", 7, minimum=0)
# What a newly accepted peer may ask, and how much; editable per peer in the admin.
FLOTILLA_FEDERATION_PEER_COMMANDS = env_list(
    "FLOTILLA_FEDERATION_PEER_COMMANDS",
    ["agent.spawn", "agent.status", "agent.kill", "agent.kill_all"],
)
FLOTILLA_FEDERATION_PEER_MAX_AGENTS = env_int("FLOTILLA_FEDERATION_PEER_MAX_AGENTS", 10, minimum=0)
FLOTILLA_FEDERATION_PEER_REQUESTS_PER_MINUTE = env_int(
    "FLOTILLA_FEDERATION_PEER_REQUESTS_PER_MINUTE", 600, minimum=1
)

# --- Projects: DAGs of agent tasks (docs/taskqueue.md) ------------------------

FLOTILLA_PROJECT_MAX_TASKS = env_int("FLOTILLA_PROJECT_MAX_TASKS", 10_000, minimum=1)
# Backoffs and not-before times closer than this are kept by a waker task that
# sleeps in a worker; later ones are planned by the once-a-minute tick.
FLOTILLA_PROJECT_WAKE_HORIZON_S = env_int("FLOTILLA_PROJECT_WAKE_HORIZON_S", 90, minimum=1)
# A claimed task whose dispatcher died before its agent was spawned is
# released after this long.
FLOTILLA_PROJECT_PREPARE_TIMEOUT_S = env_int("FLOTILLA_PROJECT_PREPARE_TIMEOUT_S", 900, minimum=60)
# How often the reconciler may re-run a project agent whose worker died; such
# runs do not spend the task's own retries.
FLOTILLA_PROJECT_AGENT_RESTARTS = env_int("FLOTILLA_PROJECT_AGENT_RESTARTS", 2, minimum=0)
FLOTILLA_WEBHOOK_TIMEOUT_S = env_float("FLOTILLA_WEBHOOK_TIMEOUT_S", 10.0, minimum=0.1)
FLOTILLA_WEBHOOK_MAX_ATTEMPTS = env_int("FLOTILLA_WEBHOOK_MAX_ATTEMPTS", 8, minimum=1)
FLOTILLA_WEBHOOK_BACKOFF_S = env_float("FLOTILLA_WEBHOOK_BACKOFF_S", 5.0, minimum=0.01)
FLOTILLA_WEBHOOK_BACKOFF_CAP_S = env_float("FLOTILLA_WEBHOOK_BACKOFF_CAP_S", 600.0, minimum=0.01)
FLOTILLA_PLANNER_MODEL = env_str("FLOTILLA_PLANNER_MODEL", "claude-sonnet-4-6")
FLOTILLA_PLANNER_MAX_TOKENS = env_int("FLOTILLA_PLANNER_MAX_TOKENS", 8192, minimum=512)
FLOTILLA_PLANNER_MAX_TASKS = env_int("FLOTILLA_PLANNER_MAX_TASKS", 30, minimum=1)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO") or "INFO"},
    "loggers": {"django_q": {"level": "WARNING"}},
}

if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", default=True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
