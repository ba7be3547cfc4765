"""Settings of the benchmark project: ``bench.Tick`` bound to signalbus, ``bench.#`` public.

Environment:
    SIGNALBUS_BROKER_URL  the broker both sides use (default: the embedded 0MQ one)
    BENCH_DB_DIR          folder of the SQLite database (the benchmarks give each run a
                          temporary one; default: the system's temporary folder)
    BENCH_UNBOUND         "1": Tick is not bound, so a save publishes nothing (the bare
                          ORM baseline of ``benchmarks.publish_rate``)
"""

import os
import tempfile

SECRET_KEY = "bench-not-secret-bench-not-secret-0123456789abcdef"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
USE_TZ = True
INSTALLED_APPS = ["benchmarks.benchproject.bench", "signalbus"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(
            os.environ.get("BENCH_DB_DIR") or tempfile.gettempdir(), "signalbus-bench.sqlite3"
        ),
        # WAL without an fsync per commit: a save stays cheap, as on a database
        # server, so the figures are about the event's path, not the disk.
        "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL"},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["stderr"], "level": "WARNING"},
}

SIGNALBUS = {
    "BROKER_URL": os.environ.get("SIGNALBUS_BROKER_URL", "zmq://127.0.0.1:5560"),
    "MODELS": {}
    if os.environ.get("BENCH_UNBOUND") == "1"
    else {"bench.Tick": {"fields": ["payload"]}},
    "PUBLIC_TOPICS": ["bench.#"],
}
