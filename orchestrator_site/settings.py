"""Settings for a Flotilla hub, read from the environment.

Every value an operator may change is read here through the strict helpers in
``orchestrator_site.env``; see the configuration table in README.md.
"""

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
    "agents",
    "killswitch",
    "orchestrator_site",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
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
LOGIN_REDIRECT_URL = "/admin/"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "orchestrator_site.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Flotilla hub API",
    "DESCRIPTION": "Spawn, watch and kill AI coding agents.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
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
    "poll": 0.05,
    "save_limit": 1000,
    "label": "Task queue",
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

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
