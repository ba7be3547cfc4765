"""The Django project the test suite runs against (and its worker subprocesses)."""

import json
import os

SECRET_KEY = "tests-not-secret-tests-not-secret-0123456789abcdef"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "tests.project.urls"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "tests.project.shop",
    "signalbus",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SIGNALBUS_TEST_DB", ":memory:"),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
MIDDLEWARE = [  # what a site serving the token view has
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
STATIC_URL = "/static/"  # the live server of the browser tests serves it

SIGNALBUS = {
    "BROKER_URL": "memory://tests",
    "MODELS": {
        "shop.Order": {"fields": ["id", "status", "total", "placed_at"]},
        "shop.Tenant": {"fields": ["slug", "name"]},
    },
    "PUBLIC_TOPICS": ["shop.#", "public.#"],
    "AUTHORIZE": "tests.project.shop.auth.can_subscribe",
    "ALLOWED_ORIGINS": ["http://app.example"],
    "KEEPALIVE": float(os.environ.get("SIGNALBUS_TEST_KEEPALIVE", "15")),
    "CLIENT_QUEUE": int(os.environ.get("SIGNALBUS_TEST_CLIENT_QUEUE", "1000")),
    "REPLAY_BUFFER": int(os.environ.get("SIGNALBUS_TEST_REPLAY", "10000")),
    # A worker subprocess's own settings, e.g. '{"MAX_CONNECTIONS": 3}'.
    **json.loads(os.environ.get("SIGNALBUS_TEST_SETTINGS", "{}")),
}
