# The image of compose.yaml's `web` and `worker`: signalbus with the PostgreSQL extra,
# and the example project (example/) to run. The default command is the worker;
# compose.yaml gives the web service its own command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY signalbus ./signalbus
COPY brokers ./brokers
COPY bridges ./bridges
COPY example ./example
RUN pip install ".[postgres]"

# Not root. /data holds the example's SQLite file when no PostgreSQL is configured.
RUN useradd --system --uid 10001 --home-dir /data --create-home signalbus
USER signalbus

# demoproj and items are imported from the source tree, signalbus from site-packages.
ENV PYTHONPATH=/src/example \
    DJANGO_SETTINGS_MODULE=demoproj.settings \
    SIGNALBUS_DEMO_DIR=/data
WORKDIR /src/example
EXPOSE 8000 8001

CMD ["signalbus", "worker", "--settings", "demoproj.settings", "--host", "0.0.0.0", "--port", "8001"]
