"""Settings for a Flotilla hub, read from the environment.

Every value an operator may change is read here through the strict helpers in
``orchestrator_site.env``; see the configuration table in README.md.
"""

import contextlib
import os
import re
import secrets
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from orchestrator_site.env import (
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_rate,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent

FLOTILLA_ENV = env_choice("FLOTILLA_ENV", "development", ["development", "production"])
PRODUCTION = FLOTILLA_ENV == "production"
DEBUG = env_bool("DEBUG", default=False)

DATA_DIR = Path(env_str("DATA_DIR", str(BASE_DIR / "var")) or "").expanduser().resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)
# The database, the keys and every agent's worktree live here: only the hub's
# own user may enter. Sandboxes are started by that user and receive what they
# need as bind mounts, so nothing below has to be reachable by the sandbox user.
if DATA_DIR.stat().st_uid == os.geteuid():
    DATA_DIR.chmod(0o700)


def _private_file(path: Path, make: Callable[[], str]) -> str:
    """The text of a file only the hub's user can read, created with ``make()`` if absent.

    The file is written in full under a temporary name and then linked into
    place, so a process starting at the same moment reads either nothing (and
    links its own) or the whole file, never half of one.
    """
    if not path.exists():
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(make())
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
    path.chmod(0o600)
    return path.read_text().strip()


def _sandbox_tools_dir(name: str) -> Path:
    """Where tools every sandbox runs (gate toolchain, agent CLIs) live by default.

    Sandboxes bind them read-only and run them as the sandbox user, so every
    directory above must let that user through: never DATA_DIR, which is
    private, and never a checkout under a private home. A root hub keeps them
    in /var/lib/flotilla; any other user beside the checkout.
    """
    if os.geteuid() == 0:
        return Path("/var/lib/flotilla") / name
    return BASE_DIR / ".sandbox-tools" / name


# This hub's sandboxes (containers, cgroups, processes) carry this id, so a
# reconciler sweeps its own and never another hub's on the same machine or
# Docker engine, even when both have the same node name.
FLOTILLA_HUB_UID = _private_file(DATA_DIR / "hub_uid", lambda: secrets.token_hex(8))


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
    return _private_file(DATA_DIR / "secret_key", lambda: secrets.token_urlsafe(50))


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# daphne is not an app here: the web process is ``python -m daphne`` (runhub),
# and as an app it would only replace runserver while importing Twisted into
# every process (node supervisors, the django-q2 cluster, each manage.py
# command): a fifth of each one's start-up CPU.
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    # Swagger UI's files, served by the hub itself (no CDN): see SPECTACULAR_SETTINGS.
    "drf_spectacular_sidecar",
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


def _databases() -> dict[str, dj_database_url.DBConfig]:
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
    # The docs page loads Swagger UI from the hub's own static files
    # (drf-spectacular-sidecar), never from a CDN: it works offline and runs
    # no third-party script on a page that holds the user's session.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # No badge fetched from the public validator.swagger.io.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    # The spawn APIs of agents and federation share these choice sets.
    "ENUM_NAME_OVERRIDES": {
        "AgentTypeEnum": "agents.models.AgentType",
        "RuntimeEnum": "agents.models.Runtime",
        "PeerAgentTypeEnum": ["worker", "reviewer", "tester"],
        "PeerRuntimeEnum": ["claude", "script"],
    },
    # Each answer that names an object links to the operations on it (OpenAPI links).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "orchestrator_site.schema.add_object_links",
    ],
}

# Redis is optional: without REDIS_URL the django-q2 broker is the database,
# so a single machine needs no server at all.
REDIS_URL = env_str("REDIS_URL") or None
# The longest timeout a spawn may ask for, an operator maximum (see the limits
# below); FLOTILLA_AGENT_MAX_RUNTIME_S is its older name, still read.
FLOTILLA_MAX_TIMEOUT_S = env_int(
    "FLOTILLA_MAX_TIMEOUT_S",
    env_int("FLOTILLA_AGENT_MAX_RUNTIME_S", 4 * 3600, minimum=60),
    minimum=60,
)
FLOTILLA_AGENT_MAX_RUNTIME_S = FLOTILLA_MAX_TIMEOUT_S
Q_CLUSTER = {
    "name": "flotilla",
    # Short jobs only (federation deliveries, webhooks, project dispatch,
    # schedules): agent runs belong to the node supervisor (agents/supervisor.py).
    "workers": env_int("FLOTILLA_WORKERS", 4, minimum=1),
    "recycle": 200,
    "timeout": 600,
    "retry": 660,
    "max_attempts": 1,
    "ack_failures": True,
    "catch_up": False,
    # How often an idle ORM broker looks for new tasks (django-q2's default).
    # Spawns do not wait on it (the node supervisor is woken directly); at
    # 0.02 s, as it once was, each idle worker node spent a tenth of a core.
    "poll": env_float("FLOTILLA_QUEUE_POLL_S", 0.2, minimum=0.01),
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
# The node supervisor (agents/supervisor.py) claims queued agents from the
# database, up to this many running on this node at once.
FLOTILLA_NODE_CAPACITY = env_int("FLOTILLA_NODE_CAPACITY", MAX_CONCURRENT_AGENTS, minimum=1)
# Nodes claim only the agents spawned in their own pool: one database may
# serve separate sets of nodes (a dedicated set of machines, a test rig).
FLOTILLA_NODE_POOL = env_str("FLOTILLA_NODE_POOL", "default") or "default"
# A node renews the lease of every agent it runs this often; an agent whose
# lease is older than FLOTILLA_NODE_LEASE_S belongs to a lost node, and any
# node recovers it (a retry when it has retries left, else "node lost").
FLOTILLA_NODE_LEASE_S = env_float("FLOTILLA_NODE_LEASE_S", 15.0, minimum=1.0)
FLOTILLA_NODE_HEARTBEAT_S = env_float(
    "FLOTILLA_NODE_HEARTBEAT_S", FLOTILLA_NODE_LEASE_S / 3, minimum=0.1
)
if FLOTILLA_NODE_HEARTBEAT_S >= FLOTILLA_NODE_LEASE_S:
    raise ImproperlyConfigured(
        "FLOTILLA_NODE_HEARTBEAT_S must be shorter than FLOTILLA_NODE_LEASE_S"
    )
# How long a stopping node waits for its runs to clean up and hand their
# agents back; runhub kills what is left a second later.
FLOTILLA_NODE_STOP_S = env_float("FLOTILLA_NODE_STOP_S", 3.0, minimum=0.5)
# How often a supervisor looks for queued agents when no wake-up came, and
# runs its timers.
FLOTILLA_NODE_POLL_S = env_float("FLOTILLA_NODE_POLL_S", 1.0, minimum=0.05)
# What every node supervisor runs about once every FLOTILLA_NODE_POLL_S, by
# dotted path: short, idempotent checks of times that have come, which must
# not sleep in a worker (docs/taskqueue.md, "The wake timer and the tick").
FLOTILLA_NODE_TIMERS = ["taskqueue.dispatcher.projects_wake_due"]
# A retry after a failure that was not the agent's own waits this long, doubling
# with every attempt up to FLOTILLA_RETRY_BACKOFF_MAX_S.
FLOTILLA_RETRY_BACKOFF_S = env_float("FLOTILLA_RETRY_BACKOFF_S", 2.0, minimum=0)
FLOTILLA_RETRY_BACKOFF_MAX_S = env_float("FLOTILLA_RETRY_BACKOFF_MAX_S", 120.0, minimum=0)
# Prometheus scrapes /metrics with this bearer token; staff users may read it too.
FLOTILLA_METRICS_TOKEN = env_str("FLOTILLA_METRICS_TOKEN") or None
FLOTILLA_CGROUP_ROOT = Path(env_str("FLOTILLA_CGROUP_ROOT", "/sys/fs/cgroup") or "")
FLOTILLA_DEFAULT_TIMEOUT_S = env_int("FLOTILLA_DEFAULT_TIMEOUT_S", 1800, minimum=1)
FLOTILLA_OUTPUT_TAIL_LINES = env_int("FLOTILLA_OUTPUT_TAIL_LINES", 40, minimum=1)

# --- Operator maxima: limits a spawn may lower, never raise (DESIGN.md) -------

FLOTILLA_MAX_MEMORY_MB = env_int("FLOTILLA_MAX_MEMORY_MB", 4096, minimum=16)
FLOTILLA_MAX_PIDS = env_int("FLOTILLA_MAX_PIDS", 1024, minimum=8)
FLOTILLA_MAX_CPUS = env_float("FLOTILLA_MAX_CPUS", 2.0, minimum=0.01)
# An agent's stored output over its whole run; past it only a rolling tail is
# kept, and one event says how much was dropped.
FLOTILLA_MAX_OUTPUT_BYTES = env_int("FLOTILLA_MAX_OUTPUT_BYTES", 8 * 1024 * 1024, minimum=65536)
# An agent whose worktree grows past this is stopped, and fails saying so.
FLOTILLA_MAX_WORKTREE_MB = env_int("FLOTILLA_MAX_WORKTREE_MB", 2048, minimum=1)
# How much event data one page carries: the events API and the dashboard's replay.
FLOTILLA_EVENTS_PAGE_BYTES = env_int("FLOTILLA_EVENTS_PAGE_BYTES", 1024 * 1024, minimum=4096)
# How long an Idempotency-Key of POST /agents and /projects is remembered
# (agents/idempotency.py); a schedule prunes older ones.
FLOTILLA_IDEMPOTENCY_TTL_S = env_int("FLOTILLA_IDEMPOTENCY_TTL_S", 24 * 3600, minimum=60)
# The event stream for API clients (dashboard/event_stream.py) sends a comment
# this often when it has nothing else to say, so proxies keep it open.
FLOTILLA_EVENT_STREAM_HEARTBEAT_S = env_float(
    "FLOTILLA_EVENT_STREAM_HEARTBEAT_S", 15.0, minimum=0.05
)


def _defaults_within_maxima(maximum_of: dict[str, str]) -> None:
    """A per-agent default above its maximum would give every spawn a limit it may not have."""
    for default, maximum in maximum_of.items():
        value, limit = globals()[default], globals()[maximum]
        if value > limit:
            raise ImproperlyConfigured(f"{default} ({value}) must not exceed {maximum} ({limit})")


_defaults_within_maxima(
    {
        "FLOTILLA_SANDBOX_MEMORY_MB": "FLOTILLA_MAX_MEMORY_MB",
        "FLOTILLA_SANDBOX_PIDS": "FLOTILLA_MAX_PIDS",
        "FLOTILLA_SANDBOX_CPUS": "FLOTILLA_MAX_CPUS",
        "FLOTILLA_DEFAULT_TIMEOUT_S": "FLOTILLA_MAX_TIMEOUT_S",
    }
)

FLOTILLA_GIT_AUTHOR_NAME = env_str("FLOTILLA_GIT_AUTHOR_NAME", "Flotilla") or "Flotilla"
FLOTILLA_GIT_AUTHOR_EMAIL = (
    env_str("FLOTILLA_GIT_AUTHOR_EMAIL", "flotilla@localhost") or "flotilla@localhost"
)
FLOTILLA_GIT_TIMEOUT_S = env_int("FLOTILLA_GIT_TIMEOUT_S", 120, minimum=1)
# Repository URL schemes a spawn may name; a plain path counts as "file".
FLOTILLA_REPOSITORY_SCHEMES = env_list(
    "FLOTILLA_REPOSITORY_SCHEMES", ["file", "https", "http", "ssh", "git"]
)


# --- Outbound URLs: what the hub itself fetches (netguard/outbound.py) --------
# Webhooks, peers, remote repositories and the coordinator never reach
# loopback, private, link-local or metadata addresses unless the operator
# opens them: all at once, or as single host:port entries.
FLOTILLA_ALLOW_PRIVATE_URLS = env_bool("FLOTILLA_ALLOW_PRIVATE_URLS", False)


def _private_url_allowlist() -> tuple[str, ...]:
    from netguard.addresses import allowlist_parse

    try:
        return allowlist_parse(env_str("FLOTILLA_PRIVATE_URL_ALLOWLIST") or "")
    except ValueError as error:
        raise ImproperlyConfigured(f"FLOTILLA_PRIVATE_URL_ALLOWLIST: {error}") from None


FLOTILLA_PRIVATE_URL_ALLOWLIST = _private_url_allowlist()


def _local_repository_roots() -> tuple[Path, ...]:
    roots = env_list("FLOTILLA_LOCAL_REPOSITORY_ROOTS", [])
    relative = [root for root in roots if not Path(root).is_absolute()]
    if relative:
        raise ImproperlyConfigured(
            f"FLOTILLA_LOCAL_REPOSITORY_ROOTS must list absolute directories, not {relative[0]!r}"
        )
    return tuple(Path(root).resolve() for root in roots)


# A spawn may name a repository on the hub's disk only below one of these
# (symlinks resolved); none by default, so only remote repositories.
FLOTILLA_LOCAL_REPOSITORY_ROOTS = _local_repository_roots()
# Checks run before any new agent is accepted, lowest layer first; the kill
# switch registers its "refuse while halted" guard here (DESIGN.md).
FLOTILLA_SPAWN_GUARDS = ["killswitch.guards.refuse_while_halted"]
# Admin actions on agents contributed by higher layers, by dotted path.
FLOTILLA_AGENT_ADMIN_ACTIONS = ["killswitch.admin.kill_selected_agents"]
# Who acts for an owner, by dotted path: each function takes an owner's principal
# and answers the principals that spawn agents on their behalf, whose agents
# are then the owner's too (agents.selectors.agents_owned_by). A project's
# agents are recorded as project:<id> and belong to the project's creator.
FLOTILLA_AGENT_DELEGATES = ["taskqueue.selectors.project_principals_created_by"]

# --- Egress: the only way out of a sandbox (DESIGN.md, "Network policy") -----

# The hosts a sandbox with network "allowlist" may reach through the hub's
# egress proxy: comma-separated ``host`` (ports 80 and 443) or ``host:port``
# entries. Loopback, private and link-local addresses are reachable only
# when named as ``host:port``. Unset: the package registries most setups need.
_EGRESS_PRESET = (
    "pypi.org",
    "files.pythonhosted.org",
    "registry.npmjs.org",
    "registry.yarnpkg.com",
    "deb.debian.org",
    "security.debian.org",
    "archive.ubuntu.com",
    "security.ubuntu.com",
    "github.com",
    "codeload.github.com",
    "objects.githubusercontent.com",
    "proxy.golang.org",
    "sum.golang.org",
    "crates.io",
    "static.crates.io",
    "index.crates.io",
    "rubygems.org",
    "index.rubygems.org",
    "repo.maven.apache.org",
    "repo1.maven.org",
)


def _egress_allowlist() -> tuple[str, ...]:
    from agents.egress.policy import allowlist_parse

    value = env_str("FLOTILLA_EGRESS_ALLOWLIST")
    try:
        return allowlist_parse(",".join(_EGRESS_PRESET) if value is None else value)
    except ValueError as error:
        raise ImproperlyConfigured(f"FLOTILLA_EGRESS_ALLOWLIST: {error}") from None


FLOTILLA_EGRESS_ALLOWLIST = _egress_allowlist()
# A hostile client must not hold the proxy: the time and size a request head
# may take, open connections per agent, and how long a quiet tunnel lives.
FLOTILLA_EGRESS_HEAD_TIMEOUT_S = env_float("FLOTILLA_EGRESS_HEAD_TIMEOUT_S", 10.0, minimum=0.1)
FLOTILLA_EGRESS_MAX_HEAD_BYTES = env_int("FLOTILLA_EGRESS_MAX_HEAD_BYTES", 65536, minimum=1024)
FLOTILLA_EGRESS_MAX_CONNECTIONS = env_int("FLOTILLA_EGRESS_MAX_CONNECTIONS", 32, minimum=1)
FLOTILLA_EGRESS_IDLE_TIMEOUT_S = env_float("FLOTILLA_EGRESS_IDLE_TIMEOUT_S", 300.0, minimum=0.1)
FLOTILLA_EGRESS_CONNECT_TIMEOUT_S = env_float(
    "FLOTILLA_EGRESS_CONNECT_TIMEOUT_S", 10.0, minimum=0.1
)
FLOTILLA_EGRESS_DNS_TIMEOUT_S = env_float("FLOTILLA_EGRESS_DNS_TIMEOUT_S", 5.0, minimum=0.1)
# The send buffer of each sandbox connection: larger moves bytes faster (a
# 100 MB download through the proxy keeps pace with a direct one at 2 MiB), and
# is kernel memory a client that stops reading holds until the idle timeout.
FLOTILLA_EGRESS_CLIENT_BUFFER_BYTES = env_int(
    "FLOTILLA_EGRESS_CLIENT_BUFFER_BYTES", 2 * 1024 * 1024, minimum=65536
)
# Connections listed as events per agent; beyond it they are only counted.
FLOTILLA_EGRESS_MAX_EVENTS = env_int("FLOTILLA_EGRESS_MAX_EVENTS", 500, minimum=1)

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
# its bin first on PATH.
FLOTILLA_SANDBOX_TOOLCHAIN = Path(
    env_str("FLOTILLA_SANDBOX_TOOLCHAIN", str(_sandbox_tools_dir("toolchain"))) or ""
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

# --- Repository setup: [setup] in .flotilla.toml (docs/setup.md) --------------

# The longest one setup command may run; a repository's [setup] timeout_s is
# held to it.
FLOTILLA_SETUP_TIMEOUT_S = env_int("FLOTILLA_SETUP_TIMEOUT_S", 1800, minimum=1)
# What the setup cache (DATA_DIR/setup-cache, one directory per repository)
# may hold in all; past it the least recently used entries go. 0: no cache,
# every agent runs its repository's setup.
FLOTILLA_SETUP_CACHE_MB = env_int("FLOTILLA_SETUP_CACHE_MB", 4096, minimum=0)

# --- Claude agents (docs/claude.md) ------------------------------------------

# Defaults for the `claude` runtime; a spawn may override model, max_tokens
# and max_turns in its options.
FLOTILLA_CLAUDE_MODEL = env_str("FLOTILLA_CLAUDE_MODEL", "claude-sonnet-4-5") or ""
FLOTILLA_CLAUDE_MAX_TOKENS = env_int("FLOTILLA_CLAUDE_MAX_TOKENS", 8192, minimum=256)
FLOTILLA_CLAUDE_MAX_TURNS = env_int("FLOTILLA_CLAUDE_MAX_TURNS", 200, minimum=1)
# Tool results longer than this are cut, with a note saying so.
# A Claude agent's search tool is stopped after this long (Python's re cannot
# be interrupted, so the search runs in a process that is killed).
FLOTILLA_CLAUDE_SEARCH_TIMEOUT_S = env_float("FLOTILLA_CLAUDE_SEARCH_TIMEOUT_S", 20.0, minimum=0.5)
FLOTILLA_CLAUDE_TOOL_RESULT_MAX_CHARS = env_int(
    "FLOTILLA_CLAUDE_TOOL_RESULT_MAX_CHARS", 20_000, minimum=1000
)
# Default and ceiling of run_command's timeout_s.
FLOTILLA_CLAUDE_COMMAND_TIMEOUT_S = env_int("FLOTILLA_CLAUDE_COMMAND_TIMEOUT_S", 600, minimum=1)
# How often a worker waiting on the model checks whether its agent was killed.
FLOTILLA_CLAUDE_CANCEL_POLL_S = env_float("FLOTILLA_CLAUDE_CANCEL_POLL_S", 0.1, minimum=0.01)


def _model_prices(setting: str, default: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """USD per million tokens by model-name prefix; the longest matching prefix wins.

    ``setting`` names the environment variable whose JSON adds to or replaces
    the defaults, model by model.
    """
    import json

    kinds = ("input", "output", "cache_write", "cache_read")
    prices = {model: dict(zip(kinds, values, strict=True)) for model, values in default.items()}
    configured = env_str(setting)
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
            f'{setting} must be JSON like {{"model-prefix": {{"input": 3, "output": 15, '
            f'"cache_write": 3.75, "cache_read": 0.3}}}}: {error}'
        ) from None
    return prices


FLOTILLA_CLAUDE_PRICES = _model_prices(
    "FLOTILLA_CLAUDE_PRICES",
    {
        "claude-opus-4-6": [5, 25, 6.25, 0.5],
        "claude-opus-4-5": [5, 25, 6.25, 0.5],
        "claude-opus-4": [15, 75, 18.75, 1.5],
        "claude-sonnet-4": [3, 15, 3.75, 0.3],
        "claude-3-7-sonnet": [3, 15, 3.75, 0.3],
        "claude-haiku-4": [1, 5, 1.25, 0.1],
        "claude-3-5-haiku": [0.8, 4, 1.0, 0.08],
    },
)
if not any(FLOTILLA_CLAUDE_MODEL.startswith(prefix) for prefix in FLOTILLA_CLAUDE_PRICES):
    raise ImproperlyConfigured(
        f"FLOTILLA_CLAUDE_MODEL {FLOTILLA_CLAUDE_MODEL!r} has no price in FLOTILLA_CLAUDE_PRICES"
    )

# --- Model gateway for CLI agents (docs/agents.md) ----------------------------

# The hub's OpenAI key and endpoint (the Codex runtime's model, through the
# gateway). OPENAI_BASE_URL ends in /v1, as the OpenAI SDKs expect; the
# gateway's Anthropic upstream is ANTHROPIC_BASE_URL (above), or the public
# endpoint when that is unset.
OPENAI_API_KEY = env_str("OPENAI_API_KEY") or None
OPENAI_BASE_URL = env_str("OPENAI_BASE_URL") or "https://api.openai.com/v1"
ANTHROPIC_PUBLIC_URL = "https://api.anthropic.com"
# OpenAI models by name prefix, in the same four kinds: OpenAI charges no
# extra for writing its prompt cache, so cache_write is the input price.
FLOTILLA_OPENAI_PRICES = _model_prices(
    "FLOTILLA_OPENAI_PRICES",
    {
        "gpt-5": [1.25, 10, 1.25, 0.125],
        "gpt-5-mini": [0.25, 2, 0.25, 0.025],
        "gpt-5-nano": [0.05, 0.4, 0.05, 0.005],
        "gpt-5.1-codex-mini": [0.25, 2, 0.25, 0.025],
        "gpt-4.1": [2, 8, 2, 0.5],
        "gpt-4.1-mini": [0.4, 1.6, 0.4, 0.1],
        "gpt-4.1-nano": [0.1, 0.4, 0.1, 0.025],
        "gpt-4o": [2.5, 10, 2.5, 1.25],
        "gpt-4o-mini": [0.15, 0.6, 0.15, 0.075],
        "o3": [2, 8, 2, 0.5],
        "o3-mini": [1.1, 4.4, 1.1, 0.55],
        "o4-mini": [1.1, 4.4, 1.1, 0.275],
        "codex-mini": [1.5, 6, 1.5, 0.375],
    },
)
# What one agent's gateway accepts: the time a request head may take to
# arrive and its size, a request body's size, open connections, how long a
# kept-alive client connection may stay quiet.
FLOTILLA_GATEWAY_HEAD_TIMEOUT_S = env_float("FLOTILLA_GATEWAY_HEAD_TIMEOUT_S", 10.0, minimum=0.1)
FLOTILLA_GATEWAY_MAX_HEAD_BYTES = env_int("FLOTILLA_GATEWAY_MAX_HEAD_BYTES", 65536, minimum=1024)
FLOTILLA_GATEWAY_MAX_REQUEST_BYTES = env_int(
    "FLOTILLA_GATEWAY_MAX_REQUEST_BYTES", 32 * 1024 * 1024, minimum=65536
)
FLOTILLA_GATEWAY_MAX_CONNECTIONS = env_int("FLOTILLA_GATEWAY_MAX_CONNECTIONS", 32, minimum=1)
FLOTILLA_GATEWAY_IDLE_TIMEOUT_S = env_float("FLOTILLA_GATEWAY_IDLE_TIMEOUT_S", 300.0, minimum=0.1)
# Connecting to the upstream, and the longest it may stay silent (a long
# reply that is not streamed sends nothing until it is done).
FLOTILLA_GATEWAY_CONNECT_TIMEOUT_S = env_float(
    "FLOTILLA_GATEWAY_CONNECT_TIMEOUT_S", 10.0, minimum=0.1
)
FLOTILLA_GATEWAY_UPSTREAM_TIMEOUT_S = env_float(
    "FLOTILLA_GATEWAY_UPSTREAM_TIMEOUT_S", 600.0, minimum=1
)

# --- CLI agents: claude-code and codex (docs/agents.md) ------------------------

# Where `manage.py agent_clis` installs the pinned CLIs with npm; every sandbox
# binds it read-only at the same path, so each directory above it must let the
# sandbox user through.
FLOTILLA_AGENT_CLIS_DIR = Path(
    env_str("FLOTILLA_AGENT_CLIS_DIR", str(_sandbox_tools_dir("agent-clis"))) or ""
)
# The codex runtime's model when a spawn names none; it needs a price in
# FLOTILLA_OPENAI_PRICES, so the gateway can keep a budget. (The claude-code
# runtime's default is FLOTILLA_CLAUDE_MODEL.)
FLOTILLA_CODEX_MODEL = env_str("FLOTILLA_CODEX_MODEL", "gpt-5.5") or ""
if not any(FLOTILLA_CODEX_MODEL.startswith(prefix) for prefix in FLOTILLA_OPENAI_PRICES):
    raise ImproperlyConfigured(
        f"FLOTILLA_CODEX_MODEL {FLOTILLA_CODEX_MODEL!r} has no price in FLOTILLA_OPENAI_PRICES"
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
    return _private_file(DATA_DIR / "federation_key", lambda: secrets.token_urlsafe(48))


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
# Connects that no key recorded for the sender signed, per source address
# (federation/pending.py); a PENDING peer no admin accepted is removed after
# this many days.
FLOTILLA_FEDERATION_CONNECT_RATE = env_rate("FLOTILLA_FEDERATION_CONNECT_RATE", "10/hour")
FLOTILLA_FEDERATION_PENDING_PEER_DAYS = env_int(
    "FLOTILLA_FEDERATION_PENDING_PEER_DAYS", 7, minimum=1
)

# --- Projects: DAGs of agent tasks (docs/taskqueue.md) ------------------------

FLOTILLA_PROJECT_MAX_TASKS = env_int("FLOTILLA_PROJECT_MAX_TASKS", 10_000, minimum=1)
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
