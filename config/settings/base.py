"""Everything Modelyard needs; local/test/production only override.

Values come from the environment through config.env's strict helpers.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF, UNSAFE_INLINE

from config.database import database_timeout_options
from config.env import env_bool, env_float, env_int, env_list, env_secret, env_str

BASE_DIR = Path(__file__).resolve().parent.parent.parent
DATA_DIR = Path(env_str("MODELYARD_DATA_DIR", str(BASE_DIR / ".data"))).resolve()

SECRET_KEY = env_secret("DJANGO_SECRET_KEY")
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "csp",
    "axes",
    # Modelyard, lowest layer first:
    # core ← accounts ← registry ← deployments ← monitoring ← frontend
    "core",
    "accounts",
    "registry",
    "deployments",
    "batch",
    "monitoring",
    "frontend",
]

MIDDLEWARE = [
    # First: every log record of the request, including other middlewares', carries its id.
    "core.middleware.RequestIdMiddleware",
    "core.middleware.PrometheusMiddleware",
    # Outside every middleware that touches the database, Redis or storage: their failures
    # answer 503 + Retry-After, not the 500 (or debug) page.
    "core.middleware.InfrastructureErrorMiddleware",
    # Inside it (its 503 answers the deadline's error), outside everything that queries.
    "core.middleware.DatabaseDeadlineMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "core.middleware.AuditViaMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes requires: turns a locked-out login into its 429 answer.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0),
        conn_health_checks=True,
    )
}
# A stalled or unreachable PostgreSQL answers 503 after these instead of hanging a request
# (or a task) for as long as it stalls. libpq counts the connect timeout in whole seconds,
# at least 2; a statement timeout of 0 turns it off.
DATABASE_CONNECT_TIMEOUT_SECONDS = env_int("DATABASE_CONNECT_TIMEOUT_SECONDS", 5, minimum=2)
DATABASE_STATEMENT_TIMEOUT_SECONDS = env_float("DATABASE_STATEMENT_TIMEOUT_SECONDS", 30, minimum=0)
DATABASES["default"]["OPTIONS"] = database_timeout_options(
    DATABASES["default"].get("OPTIONS", {}),
    connect_timeout=DATABASE_CONNECT_TIMEOUT_SECONDS,
    statement_timeout=DATABASE_STATEMENT_TIMEOUT_SECONDS,
)
# A server that stalls (SIGSTOP, frozen VM) never enforces its statement timeout: a web
# request gives up after waiting this long for PostgreSQL in all (core/postgresql/base.py)
# and answers 503. Tasks are not bounded: they wait the stall out and carry on.
DATABASE_REQUEST_WAIT_SECONDS = env_float("DATABASE_REQUEST_WAIT_SECONDS", 8, minimum=0)
if not DATABASES["default"]["ENGINE"].endswith("postgresql"):
    # The audit log's append-only guard and the row locks of every state machine are
    # PostgreSQL features; SQLite would silently weaken both.
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("DATABASE_URL must point at PostgreSQL (postgres://...).")
DATABASES["default"]["ENGINE"] = "core.postgresql"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL")
# A Redis that is down or stalled fails a cache call after this (the API answers 503)
# instead of holding the request: redis-py waits forever by default.
REDIS_TIMEOUT_SECONDS = env_float("REDIS_TIMEOUT_SECONDS", 3, minimum=0.1)
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "modelyard",
        "OPTIONS": {
            # JSON, not Django's default pickle: see core/cache.py.
            "serializer": "core.cache.JsonRedisSerializer",
            "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
            "socket_timeout": REDIS_TIMEOUT_SECONDS,
        },
    }
}

AUTH_USER_MODEL = "accounts.User"
# accounts/hashers.py says why scrypt; PBKDF2 stays listed so existing hashes still verify
# (and are re-hashed with scrypt on their next successful login).
PASSWORD_HASHERS = [
    "accounts.hashers.OwaspScryptPasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "frontend:login"
LOGIN_REDIRECT_URL = "frontend:model_list"
LOGOUT_REDIRECT_URL = "frontend:login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# The image collects static files at build time into its own read-only tree
# (platform/Dockerfile sets MODELYARD_STATIC_ROOT), so every web replica serves its version's.
STATIC_ROOT = Path(env_str("MODELYARD_STATIC_ROOT", str(DATA_DIR / "static"))).resolve()
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    # plotly.js from the plotly package itself (one file, not its whole data folder).
    "frontend.staticfiles.PlotlyJsFinder",
]
MEDIA_ROOT = DATA_DIR / "artifacts"
STORAGES = {
    # Artifacts: server-chosen names only (see registry.services.artifact_store).
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(MEDIA_ROOT), "file_permissions_mode": 0o640},
    },
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Uploads above this size stream to a temporary file instead of memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
FILE_UPLOAD_PERMISSIONS = 0o640

# --- Modelyard -------------------------------------------------------------------------
MODELYARD_MAX_ARTIFACT_BYTES = env_int("MODELYARD_MAX_ARTIFACT_BYTES", 512 * 1024**2, minimum=1)
MODELYARD_MAX_REFERENCE_BYTES = env_int("MODELYARD_MAX_REFERENCE_BYTES", 64 * 1024**2, minimum=1)
MODELYARD_MAX_REFERENCE_ROWS = env_int("MODELYARD_MAX_REFERENCE_ROWS", 200_000, minimum=1)
MODELYARD_SANDBOX_TIMEOUT_SECONDS = env_float("MODELYARD_SANDBOX_TIMEOUT_SECONDS", 120, minimum=1)
MODELYARD_SANDBOX_MEMORY_BYTES = env_int("MODELYARD_SANDBOX_MEMORY_BYTES", 4 * 1024**3, minimum=1)
# A validation claimed longer ago than this is considered abandoned (killed worker).
MODELYARD_VALIDATION_STALE_SECONDS = env_int("MODELYARD_VALIDATION_STALE_SECONDS", 600, minimum=1)
# Retry-After (seconds) of every 503 the platform answers for a failed dependency.
MODELYARD_RETRY_AFTER_SECONDS = env_int("MODELYARD_RETRY_AFTER_SECONDS", 5, minimum=1)
MODELYARD_PUBLIC_URL = env_str("MODELYARD_PUBLIC_URL", "http://127.0.0.1:8000")
MODELYARD_GATEWAY_URL = env_str("MODELYARD_GATEWAY_URL", "http://127.0.0.1:8001")
# One BentoML store per machine; each serving slot gets its own home linked to it.
MODELYARD_BENTOML_HOME = env_str("MODELYARD_BENTOML_HOME", str(DATA_DIR / "bentoml"))
MODELYARD_RUNTIME_STATE_DIR = env_str("MODELYARD_RUNTIME_STATE_DIR", str(DATA_DIR / "runtime"))
MODELYARD_SLOT_READY_TIMEOUT_SECONDS = env_float(
    "MODELYARD_SLOT_READY_TIMEOUT_SECONDS", 90, minimum=1
)
MODELYARD_SLOT_WORKERS = env_int("MODELYARD_SLOT_WORKERS", 1, minimum=1)
# Where slots run: "local" (bentoml serve processes here) or "kubernetes" (a Deployment +
# Service per slot, images from MODELYARD_K8S_IMAGE_REGISTRY); deployments.backends checks
# the values. See README "Running in production".
MODELYARD_RUNTIME_BACKEND = env_str("MODELYARD_RUNTIME_BACKEND", "local")
MODELYARD_K8S_NAMESPACE = env_str("MODELYARD_K8S_NAMESPACE", "modelyard")
MODELYARD_K8S_IMAGE_REGISTRY = env_str("MODELYARD_K8S_IMAGE_REGISTRY", "")
MODELYARD_K8S_IMAGE_PULL_SECRET = env_str("MODELYARD_K8S_IMAGE_PULL_SECRET", "")
MODELYARD_K8S_IN_CLUSTER = env_bool("MODELYARD_K8S_IN_CLUSTER", False)
MODELYARD_K8S_KUBECONFIG = env_str("MODELYARD_K8S_KUBECONFIG", "")
MODELYARD_K8S_CONTEXT = env_str("MODELYARD_K8S_CONTEXT", "")
MODELYARD_K8S_SLOT_REPLICAS = env_int("MODELYARD_K8S_SLOT_REPLICAS", 1, minimum=1)
# JSON: {"requests": {...}, "limits": {...}}; per deployment name: {"churn-prod": {...}}.
MODELYARD_K8S_SLOT_RESOURCES = env_str("MODELYARD_K8S_SLOT_RESOURCES", "")
MODELYARD_K8S_DEPLOYMENT_RESOURCES = env_str("MODELYARD_K8S_DEPLOYMENT_RESOURCES", "")
# A shadow's pods (low priority): their CPU request, the weight of their cgroup against the
# live pods' on a busy node; and a PriorityClass to name (created by the cluster's admin) so
# that the scheduler evicts them first and never evicts a live pod for them. "" for none.
MODELYARD_K8S_SHADOW_CPU_REQUEST = env_str("MODELYARD_K8S_SHADOW_CPU_REQUEST", "25m")
MODELYARD_K8S_SHADOW_PRIORITY_CLASS = env_str("MODELYARD_K8S_SHADOW_PRIORITY_CLASS", "")
MODELYARD_BUILD_TIMEOUT_SECONDS = env_float("MODELYARD_BUILD_TIMEOUT_SECONDS", 900, minimum=1)
# A worker building a version or driving a rollout renews its lease every third of this;
# a lease this old belongs to a dead worker and the reconcile sweep (every 15 s) takes the
# work over (deployments/services/leases.py).
MODELYARD_WORK_LEASE_SECONDS = env_int("MODELYARD_WORK_LEASE_SECONDS", 10, minimum=3)
# A rollout step that has not moved for this long is resumed (or failed) by the sweep.
MODELYARD_ROLLOUT_STUCK_SECONDS = env_int("MODELYARD_ROLLOUT_STUCK_SECONDS", 300, minimum=1)
# How often a canary's judge looks at the step's window (roll-ups land every ~10 s).
MODELYARD_CANARY_JUDGE_SECONDS = env_float("MODELYARD_CANARY_JUDGE_SECONDS", 10, minimum=0.5)

# --- Monitoring ------------------------------------------------------------------------
# Minute roll-ups older than this become hour rows. Must exceed the gateway buffers' TTL
# (6 h): a buffer rolled up again after its minute rows were downsampled would count twice.
MODELYARD_METRICS_MINUTE_RETENTION_HOURS = env_int(
    "MODELYARD_METRICS_MINUTE_RETENTION_HOURS", 48, minimum=7
)
MODELYARD_METRICS_HOUR_RETENTION_DAYS = env_int(
    "MODELYARD_METRICS_HOUR_RETENTION_DAYS", 90, minimum=1
)
# Resources of each serving slot are sampled this often (cost per prediction).
MODELYARD_RESOURCE_SAMPLE_SECONDS = env_int("MODELYARD_RESOURCE_SAMPLE_SECONDS", 15, minimum=1)
MODELYARD_RESOURCE_RETENTION_DAYS = env_int("MODELYARD_RESOURCE_RETENTION_DAYS", 30, minimum=1)
# Prices (any currency; per deployment overrides in MonitoringPolicy).
MODELYARD_PRICE_CPU_HOUR = env_float("MODELYARD_PRICE_CPU_HOUR", 0.04, minimum=0)
MODELYARD_PRICE_GB_HOUR = env_float("MODELYARD_PRICE_GB_HOUR", 0.005, minimum=0)
# The currency those prices are in: the dashboard names it beside every cost.
MODELYARD_PRICE_CURRENCY = env_str("MODELYARD_PRICE_CURRENCY", "USD")
# Drift: closed windows of this length are computed by beat; more on demand.
MODELYARD_DRIFT_WINDOW_SECONDS = env_int("MODELYARD_DRIFT_WINDOW_SECONDS", 3600, minimum=60)
MODELYARD_DRIFT_BINS = env_int("MODELYARD_DRIFT_BINS", 10, minimum=2)
MODELYARD_DRIFT_MAX_CATEGORIES = env_int("MODELYARD_DRIFT_MAX_CATEGORIES", 20, minimum=1)
MODELYARD_DRIFT_MIN_ROWS = env_int("MODELYARD_DRIFT_MIN_ROWS", 100, minimum=1)
MODELYARD_DRIFT_RETENTION_DAYS = env_int("MODELYARD_DRIFT_RETENTION_DAYS", 90, minimum=1)
# The prediction log (monitoring.services.prediction_log): whole days are dropped past this.
MODELYARD_PREDICTION_LOG_RETENTION_DAYS = env_int(
    "MODELYARD_PREDICTION_LOG_RETENTION_DAYS", 90, minimum=1
)
# Guards watch every deployment while it bakes; with this, always.
MODELYARD_GUARDS_ALWAYS = env_bool("MODELYARD_GUARDS_ALWAYS", False)
# Webhook targets on loopback/private/link-local/metadata addresses are refused unless their
# host is listed here by an admin.
MODELYARD_WEBHOOK_ALLOWED_HOSTS = env_list("MODELYARD_WEBHOOK_ALLOWED_HOSTS", [])
MODELYARD_WEBHOOK_TIMEOUT_SECONDS = env_float("MODELYARD_WEBHOOK_TIMEOUT_SECONDS", 5, minimum=0.1)
MODELYARD_WEBHOOK_MAX_ATTEMPTS = env_int("MODELYARD_WEBHOOK_MAX_ATTEMPTS", 6, minimum=1)
MODELYARD_WEBHOOK_BACKOFF_SECONDS = env_float("MODELYARD_WEBHOOK_BACKOFF_SECONDS", 10, minimum=0)
# Alerts are also e-mailed to these addresses (Django's mail backend) when set.
MODELYARD_ALERT_EMAILS = env_list("MODELYARD_ALERT_EMAILS", [])

# --- Batch jobs --------------------------------------------------------------------------
# Server paths a batch job may read its input from (comma-separated); empty: uploads only.
MODELYARD_BATCH_ALLOWED_ROOTS = env_list("MODELYARD_BATCH_ALLOWED_ROOTS", [])
# Rows per chunk when a job does not say: about CHUNK_MB of input values, at most CHUNK_ROWS
# rows (batch/services/inputs.py chunk_rows_default).
MODELYARD_BATCH_CHUNK_ROWS = env_int("MODELYARD_BATCH_CHUNK_ROWS", 250_000, minimum=1)
MODELYARD_BATCH_CHUNK_MB = env_int("MODELYARD_BATCH_CHUNK_MB", 64, minimum=1)
# Every chunk is a row and a task: a job refuses to be split finer than this.
MODELYARD_BATCH_MAX_CHUNKS = env_int("MODELYARD_BATCH_MAX_CHUNKS", 10_000, minimum=1)
# A chunk's claim; renewed every third of it while the chunk runs, so only a dead
# worker's chunk expires and is run again by the sweep.
MODELYARD_BATCH_LEASE_SECONDS = env_int("MODELYARD_BATCH_LEASE_SECONDS", 60, minimum=3)
# Claim of the prepare and join steps (also their time limit).
MODELYARD_BATCH_STEP_LEASE_SECONDS = env_int("MODELYARD_BATCH_STEP_LEASE_SECONDS", 1800, minimum=10)
MODELYARD_BATCH_CHUNK_TIMEOUT_SECONDS = env_int(
    "MODELYARD_BATCH_CHUNK_TIMEOUT_SECONDS", 600, minimum=1
)
MODELYARD_BATCH_CHILD_START_TIMEOUT_SECONDS = env_float(
    "MODELYARD_BATCH_CHILD_START_TIMEOUT_SECONDS", 120, minimum=1
)
# Threads of each batch child's numeric libraries (BLAS/OpenMP); chunks give parallelism.
MODELYARD_BATCH_CHILD_THREADS = env_int("MODELYARD_BATCH_CHILD_THREADS", 1, minimum=1)
# Transient chunk failures (child crashed or hung) are retried this often in all.
MODELYARD_BATCH_CHUNK_MAX_ATTEMPTS = env_int("MODELYARD_BATCH_CHUNK_MAX_ATTEMPTS", 3, minimum=1)
MODELYARD_BATCH_RETRY_DELAY_SECONDS = env_float("MODELYARD_BATCH_RETRY_DELAY_SECONDS", 2, minimum=0)
MODELYARD_BATCH_BUILD_POLL_SECONDS = env_float("MODELYARD_BATCH_BUILD_POLL_SECONDS", 5, minimum=0.1)

# --- Security --------------------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    # django-axes first: a locked-out (user name, address) pair is refused before any
    # password is checked, on the UI login and the admin login alike.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("MODELYARD_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("MODELYARD_LOGIN_COOLOFF_MINUTES", 15, minimum=1))
# The pair, not the user name alone: otherwise anyone could lock an admin out by typing
# wrong passwords for them. The address is REMOTE_ADDR (django-ipware is not installed):
# a client-supplied X-Forwarded-For must not let an attacker pick a fresh address per try.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# Successful sign-ins are in the audit log already; axes keeps only the failures.
AXES_DISABLE_ACCESS_LOG = True
AXES_HTTP_RESPONSE_CODE = 429

# Content Security Policy (django-csp). Pages carry no inline scripts; plotly.js sets
# inline styles, hence 'unsafe-inline' for styles only.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF, UNSAFE_INLINE],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"

# Client IPs for throttling and lockouts: the number of reverse proxies in front of the web
# process whose X-Forwarded-For entries are trusted. 0 trusts none (REMOTE_ADDR only).
MODELYARD_NUM_PROXIES = env_int("MODELYARD_NUM_PROXIES", 0, minimum=0)
# Failed API token authentications per client address (any key, valid or not, is refused
# with 429 past it), so keys cannot be guessed at request speed.
MODELYARD_TOKEN_AUTH_FAILURE_RATE = env_str("MODELYARD_TOKEN_AUTH_FAILURE_RATE", "30/min")

# /metrics (Prometheus) of the web process: a scraper presents `Authorization: Bearer
# <token>`; without a configured token only signed-in admins may read it.
MODELYARD_METRICS_TOKEN = env_str("MODELYARD_METRICS_TOKEN", "")
# Request ids: a client's X-Request-ID is kept when it looks like an id, else replaced.
MODELYARD_REQUEST_ID_HEADER = "HTTP_X_REQUEST_ID"

# --- REST API --------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["accounts.permissions.RolePermission"],
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.SearchFilter",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "core.api.pagination.DefaultPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "core.api.exceptions.exception_handler",
    # JSON that nests too deep or holds a NUL is a 400 naming the field (core.api.parsers).
    "DEFAULT_PARSER_CLASSES": [
        "core.api.parsers.SafeJSONParser",
        "rest_framework.parsers.FormParser",
        "core.api.parsers.StrictMultiPartParser",
    ],
    # Every 4xx with the error body on every operation (core.api.schema).
    "DEFAULT_SCHEMA_CLASS": "core.api.schema.ModelyardAutoSchema",
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_THROTTLE_RATES": {"token_auth_failures": MODELYARD_TOKEN_AUTH_FAILURE_RATE},
    "NUM_PROXIES": MODELYARD_NUM_PROXIES,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Modelyard API",
    "DESCRIPTION": "Model registry, reviews, deployments and monitoring.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI served from our own static files: self-hosted users are often offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    # Several models have a `state`: name each choice set after its own life cycle.
    "ENUM_NAME_OVERRIDES": {
        "VersionStateEnum": "registry.choices.VersionState",
        "RolloutStateEnum": "deployments.choices.RolloutState",
        "SlotStateEnum": "deployments.choices.SlotState",
        "BuildStateEnum": "deployments.choices.BuildState",
        "SlotColorEnum": "deployments.choices.SlotColor",
        "FrameworkEnum": "registry.choices.Framework",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        # The gateway's POST /d/{deployment}/predict, documented beside the platform API.
        "core.api.schema.gateway_paths_add",
    ],
}

# --- Celery ----------------------------------------------------------------------------
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_QUEUES_NAMES = ("default", "builds", "rollouts", "batch", "monitoring")
CELERY_TASK_ACKS_LATE = True
# With acks_late, a task whose worker dies is redelivered; every task claims its work so a
# second delivery does no harm.
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = 3600
# visibility_timeout: a message a dead worker held comes back after this (kombu restores it);
# the work's lease (deployments/services/leases.py), not this, finds a dead worker fast.
# The socket timeouts: a stalled Redis (SIGSTOP; the kernel still accepts and ACKs) fails a
# publish after them instead of holding the web request that enqueues for as long as it
# stalls; redis-py waits forever by default.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": 3600,
    "socket_timeout": REDIS_TIMEOUT_SECONDS,
    "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
}
CELERY_BROKER_CONNECTION_TIMEOUT = REDIS_TIMEOUT_SECONDS
# One retry of a publish (a Redis restarting under it), then the API answers 503: with the
# socket timeout above, a stalled broker costs a request about 2 x REDIS_TIMEOUT_SECONDS.
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 0.5,
}
# Sending a task subscribes to its result; with Redis down the redis result backend retried
# that 20 times a second apart (an API call that enqueues hung ~20 s before failing). No
# caller reads results, so fail fast: the API answers 503 and the sweeps enqueue again. No
# retry beyond the backend's one reconnect: against a stalled Redis each attempt waits out
# the socket timeout (two retries made an enqueue take 12.5 s, none 6 s).
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {
    "retry_policy": {"max_retries": 0, "interval_start": 0, "interval_step": 0.5}
}
CELERY_REDIS_SOCKET_CONNECT_TIMEOUT = REDIS_TIMEOUT_SECONDS
CELERY_REDIS_SOCKET_TIMEOUT = REDIS_TIMEOUT_SECONDS
CELERY_TASK_ALWAYS_EAGER = False
CELERY_BEAT_SCHEDULE = {
    # Reconciliation: uploads whose validation message was lost, validations whose worker died.
    "registry-validation-sweep": {"task": "registry.version_validation_sweep", "schedule": 60.0},
    # Deployments converge on their recorded state (crashed slots, lost routes, stuck rollouts).
    "deployments-reconcile": {"task": "deployments.reconcile", "schedule": 15.0},
    # Autoscaling: one decision per deployment on the gateway's in-flight reports (sent every
    # ~1 s); the up/down windows of each deployment are far longer than the tick.
    "deployments-autoscale": {"task": "deployments.autoscale", "schedule": 2.0},
    # Batch: chunks and steps of dead workers run again; due schedules start their jobs.
    "batch-jobs-sweep": {"task": "batch.jobs_sweep", "schedule": 15.0},
    "batch-schedules-due": {"task": "batch.schedules_due", "schedule": 30.0},
    # Monitoring: gateway buffers → roll-ups (the gateway flushes every 2 s), slot resources,
    # guards while baking, closed drift windows, alerts, retention.
    "monitoring-metrics-rollup": {"task": "monitoring.metrics_rollup", "schedule": 10.0},
    "monitoring-resources-sample": {
        "task": "monitoring.resources_sample",
        "schedule": float(MODELYARD_RESOURCE_SAMPLE_SECONDS),
    },
    "monitoring-guards-check": {"task": "monitoring.guards_check", "schedule": 15.0},
    "monitoring-drift-windows": {"task": "monitoring.drift_windows", "schedule": 60.0},
    "monitoring-alerts-detect": {"task": "monitoring.alerts_detect", "schedule": 15.0},
    "monitoring-webhooks-deliver": {"task": "monitoring.webhooks_deliver", "schedule": 10.0},
    "monitoring-retention": {"task": "monitoring.retention", "schedule": 3600.0},
    # The gateway's prediction log into PostgreSQL (a consumer group: a killed run's entries
    # are claimed back by the next).
    "monitoring-predictions-ingest": {"task": "monitoring.predictions_ingest", "schedule": 2.0},
    # Dashboard: closed chart buckets merged and cached before anyone asks. Every minute,
    # within the 120 s life of the young buckets' entries, so they never lapse in front of
    # a user (monitoring/selectors/buckets.py).
    "monitoring-dashboard-cache-warm": {
        "task": "monitoring.dashboard_cache_warm",
        "schedule": 60.0,
    },
    # "Predictions vs reference" within a minute of a version serving, not after its first
    # full drift window (monitoring/services/baselines.py).
    "monitoring-prediction-baselines": {
        "task": "monitoring.prediction_baselines_ensure",
        "schedule": 60.0,
    },
}

# Logs: one JSON object per line (MODELYARD_LOG_FORMAT=plain for humans at a terminal);
# every record of a request carries its request_id.
MODELYARD_LOG_FORMAT = env_str("MODELYARD_LOG_FORMAT", "json")
if MODELYARD_LOG_FORMAT not in {"json", "plain"}:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("MODELYARD_LOG_FORMAT must be 'json' or 'plain'.")
MODELYARD_LOG_LEVEL = env_str("MODELYARD_LOG_LEVEL", "INFO").upper()
_ROUTINE_LOGGERS = ("celery.beat", "celery.worker.strategy", "celery.app.trace")
_ROUTINE_LEVEL = "DEBUG" if MODELYARD_LOG_LEVEL == "DEBUG" else "WARNING"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "core.logging.RequestIdFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "core.logging.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": MODELYARD_LOG_FORMAT,
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": MODELYARD_LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # Routine lines of periodic work (beat's "Sending due task", the worker's "Task ...
        # received/succeeded" every few seconds) drowned everything else: shown at DEBUG
        # only. Failures are logged at WARNING/ERROR by the same loggers and stay visible.
        **{name: {"level": _ROUTINE_LEVEL} for name in _ROUTINE_LOGGERS},
    },
}
# Celery's processes log through LOGGING too (one format for every process), instead of
# replacing the root logger's handlers with their own format.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
