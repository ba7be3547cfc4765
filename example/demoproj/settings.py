"""Settings of the example project: a demo, so DEBUG is on and the secret has a default.

Everything that differs between runs comes from the environment, so that
``signalbus demo`` (or compose) can place the web app, the worker and the
broker on any ports without editing this file:

- ``SIGNALBUS_DEMO_DIR``: the writable directory of the SQLite file
  (default ``<tempdir>/signalbus-demo``; never inside the installed package);
- ``SIGNALBUS_DEMO_ORIGIN``: the web app's origin, granted CORS by the worker;
- ``SIGNALBUS_DEMO_EVENTS_URL``: the worker's SSE URL the page listens to;
- ``SIGNALBUS_BROKER_URL``: read by signalbus itself (it overrides ``BROKER_URL``);
- ``SIGNALBUS_DEMO_DB_HOST``: when set, PostgreSQL on that host instead of SQLite
  (compose sets it), with ``SIGNALBUS_DEMO_DB_PORT`` (5432), ``SIGNALBUS_DEMO_DB_NAME``,
  ``SIGNALBUS_DEMO_DB_USER`` (both ``signalbus``) and ``SIGNALBUS_DEMO_DB_PASSWORD``;
  it needs ``pip install 'signalbus[postgres]'``.
"""

import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-signalbus-demo-only")
DEBUG = True

DATA_DIR = Path(
    os.environ.get("SIGNALBUS_DEMO_DIR") or Path(tempfile.gettempdir()) / "signalbus-demo"
)
# SQLite does not create directories: make the data dir here, so that a bare
# ``manage.py migrate`` works as well as ``signalbus demo``.
DATA_DIR.mkdir(parents=True, exist_ok=True)

WEB_ORIGIN = os.environ.get("SIGNALBUS_DEMO_ORIGIN", "http://127.0.0.1:8000").rstrip("/")
DEMO_EVENTS_URL = os.environ.get(
    "SIGNALBUS_DEMO_EVENTS_URL", "http://127.0.0.1:8001/events?topic=items.item.%23"
)

ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]", urlsplit(WEB_ORIGIN).hostname or "127.0.0.1"]

INSTALLED_APPS = [
    "signalbus",
    "items",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "demoproj.urls"
WSGI_APPLICATION = "demoproj.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DATA_DIR / "db.sqlite3",
    }
}
if os.environ.get("SIGNALBUS_DEMO_DB_HOST"):
    DATABASES["default"] = {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ["SIGNALBUS_DEMO_DB_HOST"],
        "PORT": os.environ.get("SIGNALBUS_DEMO_DB_PORT", "5432"),
        "NAME": os.environ.get("SIGNALBUS_DEMO_DB_NAME", "signalbus"),
        "USER": os.environ.get("SIGNALBUS_DEMO_DB_USER", "signalbus"),
        "PASSWORD": os.environ.get("SIGNALBUS_DEMO_DB_PASSWORD", ""),
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

SIGNALBUS = {
    "BROKER_URL": os.environ.get("SIGNALBUS_BROKER_URL", "zmq://127.0.0.1:5560"),
    "MODELS": {"items.Item": {"fields": ["id", "title", "done", "updated_at"]}},
    "PUBLIC_TOPICS": ["items.item.#"],
    "ALLOWED_ORIGINS": [WEB_ORIGIN],
}
