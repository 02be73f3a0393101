"""Breakwater settings: one module, driven by the environment.

With nothing set, Breakwater runs embedded: SQLite and a Celery broker on the local
filesystem, so `make demo` needs nothing but Python. Production sets DATABASE_URL
(PostgreSQL), CELERY_BROKER_URL (Redis or RabbitMQ), SECRET_KEY and ALLOWED_HOSTS.
"""
import os
import secrets
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = Path(os.environ.get("BREAKWATER_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def env_bool(name, default=False):
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


def env_list(name, default):
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def _local_secret(filename, make):
    """A secret kept in var/ so that an embedded install survives restarts without setup."""
    path = VAR_DIR / filename
    if not path.exists():
        path.write_text(make())
        path.chmod(0o600)
    return path.read_text().strip()


DEBUG = env_bool("DEBUG")
SECRET_KEY = os.environ.get("SECRET_KEY") or _local_secret("secret_key", lambda: secrets.token_urlsafe(50))
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

# Fernet key that encrypts the online TUF keys at rest. Production sets it from a secret store.
TUF_KEY_ENCRYPTION_KEY = os.environ.get("BREAKWATER_KEY_ENCRYPTION_KEY") or _local_secret(
    "key_encryption_key", lambda: __import__("cryptography.fernet").fernet.Fernet.generate_key().decode()
)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "template_partials",
    "ninja",  # serves the API docs page's Swagger UI from local static files, not a CDN
    "factory",
    "factory.tuf",
    "devices",
    "waves",
    # The project package: the Celery app, and the management commands that run the processes.
    "factory.project.apps.ProjectConfig",
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
    "django_htmx.middleware.HtmxMiddleware",
    "factory.auth.CurrentFactoryMiddleware",
]

ROOT_URLCONF = "factory.project.urls"
WSGI_APPLICATION = "factory.project.wsgi.application"

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
                "factory.auth.factory_context",
            ],
            # Every page says counts the same way ("1 device", "2 devices"): factory/plurals.py.
            "builtins": ["factory.templatetags.plurals"],
        },
    }
]


def database(url):
    """One PostgreSQL database from its URL. Behind PgBouncer in transaction mode
    (BREAKWATER_PGBOUNCER=1) a server session lasts one transaction, so nothing may outlive one:
    no server-side cursors (`.iterator()` would DECLARE ... WITH HOLD in one transaction and FETCH
    in the next, maybe on another server connection) and no prepared statements."""
    config = dj_database_url.parse(url, conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", 60)), conn_health_checks=True)
    if env_bool("BREAKWATER_PGBOUNCER"):
        config["DISABLE_SERVER_SIDE_CURSORS"] = True
        # Django's default with psycopg 3 already; pinned so that no OPTIONS change turns them on.
        config.setdefault("OPTIONS", {})["prepare_threshold"] = None
    return config


if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": database(os.environ["DATABASE_URL"])}
    if os.environ.get("DATABASE_REPLICA_URL"):
        # A read replica for the reads a page marks as safe to serve a moment stale
        # (factory/replica.py, whose REPLICA is this alias). A test run uses the primary's test
        # database for it, as there is no replica of a test database.
        DATABASES["replica"] = {**database(os.environ["DATABASE_REPLICA_URL"]), "TEST": {"MIRROR": "default"}}
        DATABASE_ROUTERS = ["factory.replica.ReplicaRouter"]
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("SQLITE_PATH", str(VAR_DIR / "breakwater.sqlite3")),
            "OPTIONS": {
                # WAL lets the web server, gateway and workers read while one of them writes;
                # IMMEDIATE transactions take the write lock up front instead of failing later.
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
            },
            "TEST": {"NAME": os.environ.get("SQLITE_TEST_PATH") or None},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "")
# Timeouts, as for the broker: a Redis that stops answering fails a request in seconds instead
# of holding it (and a gunicorn thread) forever. Used by the cache and the check-in buffer.
REDIS_SOCKET_OPTIONS = {"socket_connect_timeout": 2, "socket_timeout": 3}
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL, "OPTIONS": REDIS_SOCKET_OPTIONS}}
else:
    # A file cache is shared by every process on the machine (web, gateway, workers).
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 8}},
]
# Argon2id first (Django's parameters: 100 MiB, 2 passes, 8 lanes): memory-hard, and about 140 ms
# a sign-in on this project's machines against 195 ms for PBKDF2's 1,000,000 rounds, so sign-in
# stays under 300 ms of server time without weakening the hash. Older hashes still verify and are
# rehashed with Argon2 at their next sign-in.
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
# collectstatic fills it in a deployment; until then WhiteNoise serves the finders' files
# (WHITENOISE_USE_FINDERS) but warns in every process that the folder is missing.
STATIC_ROOT.mkdir(exist_ok=True)
WHITENOISE_USE_FINDERS = True

# Uploads (key archives, UUID lists) stay in memory and are bounded.
DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
FILE_UPLOAD_HANDLERS = ["factory.uploads.RefuseTooLargeUploadHandler", "django.core.files.uploadhandler.MemoryFileUploadHandler"]

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from the page, not the cookie
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if env_bool("BREAKWATER_HTTPS"):
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", 31536000))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True

# Celery: a broker server in production, the local filesystem when embedded.
# "localhost" names no server (the transport ignores it); without a host kombu warns at every start.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://localhost/")
if CELERY_BROKER_URL.startswith("filesystem://"):
    _queue = VAR_DIR / "celery" / "queue"
    _processed = VAR_DIR / "celery" / "processed"
    for folder in (_queue, _processed, VAR_DIR / "celery" / "results", VAR_DIR / "celery" / "control"):
        folder.mkdir(parents=True, exist_ok=True)
    # kombu's filesystem transport, writing each message whole before workers see it.
    CELERY_BROKER_TRANSPORT = "factory.project.broker_files:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue),
        "data_folder_out": str(_queue),
        "processed_folder": str(_processed),
        # kombu's default is ./control, relative to wherever a process was started
        "control_folder": str(VAR_DIR / "celery" / "control"),
    }
    CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", f"file://{VAR_DIR / 'celery' / 'results'}")
else:
    CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", CELERY_BROKER_URL if CELERY_BROKER_URL.startswith("redis") else None)
    if CELERY_BROKER_URL.startswith(("redis", "rediss")):
        # Without socket timeouts a broker that accepts connections but does not answer (hung,
        # half-open after a failover) blocks a publishing web request forever. The read timeout
        # stays above kombu's 1 s BRPOP poll so an idle worker is not taken for a dead broker.
        CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_connect_timeout": 2, "socket_timeout": 3, "socket_keepalive": True}
# Sending a task retries once (a pooled connection the broker dropped), then fails: a user
# waits a few seconds at most for "the task queue cannot be reached", not minutes.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER")
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BROKER_CONNECTION_TIMEOUT = 3
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE = {}
# TUF upkeep (factory/tuf/tasks.py) is not an app-level tasks module, so autodiscovery misses it.
CELERY_IMPORTS = ["factory.tuf.tasks"]
CELERY_BEAT_SCHEDULE["tuf-views-refresh"] = {"task": "factory.tuf.tasks.tuf_views_refresh", "schedule": 600.0}
CELERY_BEAT_SCHEDULE["tuf-roots-renew"] = {"task": "factory.tuf.tasks.tuf_roots_renew", "schedule": 6 * 3600.0}

# Domain settings.
BREAKWATER_OFFLINE_THRESHOLD_HOURS = float(os.environ.get("BREAKWATER_OFFLINE_THRESHOLD_HOURS", 4))
BREAKWATER_ROLLOUT_MAX_UUIDS = 10_000
# Dashboard rollouts of more devices than this run as a Celery task with a progress bar.
BREAKWATER_ROLLOUT_BACKGROUND_THRESHOLD = int(os.environ.get("BREAKWATER_ROLLOUT_BACKGROUND_THRESHOLD", 2000))
# A running rollout job's worker marks it alive this often; a job no worker starts in the
# patience is called off (waves/rollout_jobs.py).
BREAKWATER_ROLLOUT_JOB_HEARTBEAT_SECONDS = float(os.environ.get("BREAKWATER_ROLLOUT_JOB_HEARTBEAT_SECONDS", 5))
BREAKWATER_ROLLOUT_JOB_QUEUE_PATIENCE_SECONDS = float(os.environ.get("BREAKWATER_ROLLOUT_JOB_QUEUE_PATIENCE_SECONDS", 900))
# Behind N reverse proxies (a load balancer in front of several web processes), the client's
# address for sign-in limits is the Nth from the right in X-Forwarded-For.
BREAKWATER_TRUSTED_PROXY_HOPS = int(os.environ.get("BREAKWATER_TRUSTED_PROXY_HOPS", 0))
# Failed sign-ins per client address and per username, and failed API tokens per address, allowed
# in one window before the answer is 429 (factory/ratelimit.py).
BREAKWATER_LOGIN_FAILURES = int(os.environ.get("BREAKWATER_LOGIN_FAILURES", 10))
BREAKWATER_API_TOKEN_FAILURES = int(os.environ.get("BREAKWATER_API_TOKEN_FAILURES", 30))
BREAKWATER_LOGIN_FAILURE_WINDOW_SECONDS = int(os.environ.get("BREAKWATER_LOGIN_FAILURE_WINDOW_SECONDS", 15 * 60))
BREAKWATER_STATUS_INTERVAL_SECONDS = float(os.environ.get("BREAKWATER_STATUS_INTERVAL_SECONDS", 15))
# A staged device with no progress for this long counts as stuck in the wave status.
BREAKWATER_STATUS_STUCK_AFTER_MINUTES = float(os.environ.get("BREAKWATER_STATUS_STUCK_AFTER_MINUTES", 240))
CELERY_BEAT_SCHEDULE["wave-status"] = {"task": "waves.tasks.wave_status_schedule", "schedule": BREAKWATER_STATUS_INTERVAL_SECONDS}
# The full recount that proves the status counts (waves/status_counts.py) against the rows.
CELERY_BEAT_SCHEDULE["status-counts-check"] = {"task": "waves.tasks.status_counts_check", "schedule": 3600.0, "options": {"expires": 3000}}
CELERY_BEAT_SCHEDULE["rollout-plans"] = {"task": "waves.plan_tasks.plans_evaluate", "schedule": 60.0, "options": {"expires": 55}}
# Device events are deleted this many days after the gateway received them (0 keeps them for
# ever), except the reports waves still read (waves/event_retention.py); the purge runs hourly.
BREAKWATER_EVENT_RETENTION_DAYS = float(os.environ.get("BREAKWATER_EVENT_RETENTION_DAYS", 90))
CELERY_BEAT_SCHEDULE["device-events-purge"] = {"task": "waves.event_retention_tasks.device_events_purge", "schedule": 3600.0, "options": {"expires": 3000}}

# Device gateway (mutual TLS). Its TLS identity is generated and kept in the database unless
# BREAKWATER_GATEWAY_CERTFILE, _KEYFILE and _SERVER_CA (the CA devices trust it by) are set.
BREAKWATER_GATEWAY_URL = os.environ.get("BREAKWATER_GATEWAY_URL", "https://127.0.0.1:8443")
BREAKWATER_GATEWAY_HOSTS = env_list("BREAKWATER_GATEWAY_HOSTS", "localhost,127.0.0.1")
BREAKWATER_GATEWAY_CERTFILE = os.environ.get("BREAKWATER_GATEWAY_CERTFILE", "")
BREAKWATER_GATEWAY_KEYFILE = os.environ.get("BREAKWATER_GATEWAY_KEYFILE", "")
BREAKWATER_GATEWAY_SERVER_CA = os.environ.get("BREAKWATER_GATEWAY_SERVER_CA", "")
# How often a device registered through lmp-device-register polls (its sota.toml's polling_sec).
BREAKWATER_DEVICE_POLLING_SECONDS = int(os.environ.get("BREAKWATER_DEVICE_POLLING_SECONDS", 300))
# Check-ins are coalesced (in Redis when REDIS_URL is set) and written in batches this often.
BREAKWATER_CHECKIN_FLUSH_SECONDS = float(os.environ.get("BREAKWATER_CHECKIN_FLUSH_SECONDS", 5))
# Event times a device may report, in days before and after the server's clock ("back,ahead"):
# a time outside is refused with a 400 rather than stored where no timeline would show it.
BREAKWATER_EVENT_TIME_WINDOW = tuple(float(days) for days in os.environ.get("BREAKWATER_EVENT_TIME_WINDOW", "7,1").split(","))
# How long a gateway process trusts what it read about a device (deletion, group, certificate).
BREAKWATER_GATEWAY_DEVICE_CACHE_SECONDS = float(os.environ.get("BREAKWATER_GATEWAY_DEVICE_CACHE_SECONDS", 5))
# Gateway processes only (set by factory/project/gateway/worker.py): how long a tag's view rows are kept
# in memory; a rollout, complete or cancel reaches devices at most this much later.
BREAKWATER_GATEWAY_VIEW_CACHE_SECONDS = float(os.environ.get("BREAKWATER_GATEWAY_VIEW_CACHE_SECONDS", 0))
# What a gateway connection may take (factory/project/gateway/server.py): seconds for the TLS handshake,
# for a request head (from its first byte), for a request body, and between kept-alive requests;
# the largest request head and body; open connections per worker process, and per client address
# in each worker (0: no cap; behind a load balancer that hides device addresses, raise or turn off).
BREAKWATER_GATEWAY_HANDSHAKE_TIMEOUT = float(os.environ.get("BREAKWATER_GATEWAY_HANDSHAKE_TIMEOUT", 10))
BREAKWATER_GATEWAY_HEADER_TIMEOUT = float(os.environ.get("BREAKWATER_GATEWAY_HEADER_TIMEOUT", 10))
BREAKWATER_GATEWAY_BODY_TIMEOUT = float(os.environ.get("BREAKWATER_GATEWAY_BODY_TIMEOUT", 30))
BREAKWATER_GATEWAY_KEEPALIVE_TIMEOUT = float(os.environ.get("BREAKWATER_GATEWAY_KEEPALIVE_TIMEOUT", 15))
BREAKWATER_GATEWAY_LINGER_TIMEOUT = float(os.environ.get("BREAKWATER_GATEWAY_LINGER_TIMEOUT", 5))
BREAKWATER_GATEWAY_MAX_HEADER_BYTES = int(os.environ.get("BREAKWATER_GATEWAY_MAX_HEADER_BYTES", 8192))
BREAKWATER_GATEWAY_MAX_BODY_BYTES = int(os.environ.get("BREAKWATER_GATEWAY_MAX_BODY_BYTES", 64 * 1024))
BREAKWATER_GATEWAY_MAX_CONNECTIONS = int(os.environ.get("BREAKWATER_GATEWAY_MAX_CONNECTIONS", 10_000))
BREAKWATER_GATEWAY_MAX_CONNECTIONS_PER_ADDRESS = int(os.environ.get("BREAKWATER_GATEWAY_MAX_CONNECTIONS_PER_ADDRESS", 1_000))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
