"""Berth's settings. Every value comes from the environment, with a default that works on one machine.

Helpers follow Healthchecks (hc/settings.py): ``envbool``, ``envint`` and ``envsecret``.
"""

import os
import secrets
import socket
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def envbool(name: str, default: str) -> bool:
    """Read a True/False environment variable; anything else is a configuration error."""
    value = os.getenv(name, default=default)
    if value not in ("", "True", "False", "1", "0", "true", "false"):
        raise ImproperlyConfigured(f"Unexpected value {name}={value}, use 'True' or 'False'")
    return value in ("True", "1", "true")


def envint(name: str, default: str) -> int:
    """Read an integer environment variable."""
    value = os.getenv(name, default=default)
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"Unexpected value {name}={value}, use an integer") from None


def envsecret(name: str) -> str | None:
    """Read a secret from NAME, or from the file named by NAME_FILE (Docker secrets)."""
    if path := os.getenv(f"{name}_FILE"):
        return Path(path).read_text().strip()
    return os.getenv(name)


DATA_DIR = Path(os.getenv("BERTH_DATA_DIR", BASE_DIR / "var"))
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    """Use SECRET_KEY when set; otherwise generate one once and keep it in DATA_DIR."""
    if key := envsecret("SECRET_KEY"):
        return key
    path = DATA_DIR / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        key = secrets.token_urlsafe(50)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key)
        return key


SECRET_KEY = _secret_key()
DEBUG = envbool("DEBUG", "False")
ALLOWED_HOSTS = [h for h in os.getenv("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in os.getenv("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

# The node this process runs on; its worker listens on the queue "node.<NODE_NAME>".
NODE_NAME = os.getenv("BERTH_NODE", socket.gethostname())

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "project",
    "images",
    "containers",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "project.auth.TokenAuthenticationMiddleware",
    "project.auth.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
APPEND_SLASH = False

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

ASGI_APPLICATION = "project.asgi.application"
WSGI_APPLICATION = None

# SQLite under DATA_DIR by default; DATABASE_URL (postgres://...) switches database.
if os.getenv("DATABASE_URL"):
    DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"], conn_max_age=60)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "berth.sqlite3",
            # Web, worker and tests share the file: WAL lets readers run beside one writer.
            "OPTIONS": {
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.getenv("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
WHITENOISE_USE_FINDERS = True

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
X_FRAME_OPTIONS = "DENY"

# Redis: Celery broker and results, Channels layer.
REDIS_URL = os.getenv("REDIS_URL", "redis://127.0.0.1:6379/0")

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
# One result backend (its Redis pool and result subscription) for every thread of a process:
# Daphne runs each request's sync code in a thread of its own, and a per-thread backend (Celery's
# default) connected to Redis anew and subscribed again for every request that waits on a task.
# Celery 5.7's Redis result consumer lets one thread read the subscription for all of them.
CELERY_RESULT_BACKEND_THREAD_SAFE = True
CELERY_TASK_DEFAULT_QUEUE = f"node.{NODE_NAME}"
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = False
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = envbool("CELERY_TASK_ALWAYS_EAGER", "False")
# Celery's Django fixup closes the database connection before and after every task, and with
# SQLite the last connection to close checkpoints the WAL into the database (an fsync): a millisecond
# or two on every task. With SQLite, keep it across tasks (closed every DB_REUSE_MAX tasks). Not with
# a database server: the fixup would then never notice a connection the server dropped.
if not os.getenv("DATABASE_URL"):
    CELERY_DB_REUSE_MAX = int(os.getenv("BERTH_WORKER_DB_REUSE_MAX", "200"))

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # channels_redis blocks up to 5 s on a receive; redis-py's own read timeout must be longer,
        # or an idle socket's consumer dies with "Timeout reading from ..." (seen on busy loops).
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 30, "socket_connect_timeout": 5}],
                   "capacity": 1500, "expiry": 30},
    }
}

# The engine (runtime/): all of its state lives under RUNTIME_ROOT.
RUNTIME_ROOT = os.getenv("RUNTIME_ROOT", "/var/lib/berth")
RUNTIME_RUN_ROOT = os.getenv("RUNTIME_RUN_ROOT", "/run/berth")
# Uploads (docker import / load) are staged under DATA_DIR/uploads up to this size.
MAX_UPLOAD_SIZE = envint("MAX_UPLOAD_SIZE", str(64 << 30))
INSECURE_REGISTRIES = [r for r in os.getenv("INSECURE_REGISTRIES", "").split(",") if r]
# Seccomp filters for the native syscall ABI only (faster starts; 32-bit syscalls then kill): runtime/config.py.
SECCOMP_NATIVE_ONLY = envbool("BERTH_SECCOMP_NATIVE_ONLY", "False")
# The OCI runtime of containers created without --runtime: "auto" (crun when installed and usable
# on this host, else runc), "runc" or "crun".
DEFAULT_RUNTIME = os.getenv("BERTH_DEFAULT_RUNTIME", "auto")
# The worker remounts the host's cgroup2 hierarchy with favordynmods at start (runtime/cgroups.py).
CGROUP_FAVOR_DYNMODS = envbool("BERTH_CGROUP_FAVORDYNMODS", "True")
# The embedded DNS of user-defined networks (runtime/network/dns.py), answered by the worker, and
# where it relays other names ("ip" or "ip:port", comma-separated; default: the host's resolvers).
EMBEDDED_DNS = envbool("BERTH_EMBEDDED_DNS", "True")
DNS_UPSTREAMS = [u for u in os.getenv("BERTH_DNS_UPSTREAMS", "").split(",") if u]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.getenv("LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}
