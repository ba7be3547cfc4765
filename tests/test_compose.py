"""compose.yaml, checked without a Docker engine.

``docker-compose config`` validates the file and prints it normalised (anchors
expanded, short forms made long); the tests read that output, so they hold for
what compose will run, not for how the file happens to be spelled. They check
the wiring between the services: the broker URL names the rabbitmq service,
the health checks probe what the services serve, and the addresses the
browser is given are the ports that are published.

docker-compose 1.x (Debian's package, installed by .ci/run) prints YAML only,
read with PyYAML, which signalbus already has through ``uvicorn[standard]``;
Compose v2 (``docker compose``) prints JSON with ``--format json``.
"""

from __future__ import annotations

import json
import os
import runpy
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"
SETTINGS_FILE = ROOT / "example" / "demoproj" / "settings.py"
INSTALL_HINT = "docker-compose not installed: apt-get install docker-compose"


def _compose_command() -> list[str] | None:
    """``docker-compose`` (1.x or a v2 standalone), else the ``docker compose`` plugin."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    # COMPOSE_FILE, COMPOSE_PROFILES and the like in the caller's environment would
    # change what is read: leave them out.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def compose() -> list[str]:
    command = _compose_command()
    if command is None:
        if os.environ.get("CI", "").lower() in {"true", "1"}:
            pytest.fail(f"{INSTALL_HINT} (.ci/run installs it; CI must not skip this)")
        pytest.skip(INSTALL_HINT)
    return [*command, "-f", str(COMPOSE_FILE)]


@pytest.fixture(scope="module")
def config(compose: list[str]) -> dict[str, Any]:
    """The normalised configuration, as a dict."""
    done = _run([*compose, "config", "--format", "json"])
    # docker-compose 1.x has no --format: it prints its usage on stderr and exits 0.
    if done.returncode == 0 and done.stdout.strip():
        loaded: dict[str, Any] = json.loads(done.stdout)
        return loaded
    done = _run([*compose, "config"])
    assert done.returncode == 0, f"{' '.join(compose)} config failed:\n{done.stderr}"
    import yaml

    loaded = yaml.safe_load(done.stdout)
    return loaded


@pytest.fixture(scope="module")
def services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = config["services"]
    return found


# -- reading the normalised forms of 1.x and v2 ------------------------------------------------


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def _argv(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def _healthcheck(service: dict[str, Any]) -> list[str]:
    test = (service.get("healthcheck") or {}).get("test")
    return ["CMD-SHELL", test] if isinstance(test, str) else _argv(test)


def _ports(service: dict[str, Any]) -> Iterator[tuple[int | None, int]]:
    """(published port or None, container port) for each published port."""
    for port in service.get("ports") or []:
        if isinstance(port, dict):  # v2, and 1.x's long syntax
            published = port.get("published")
            yield (int(published) if published else None), int(port["target"])
        else:  # 1.x: "[IP:]HOST:CONTAINER/PROTO" or "CONTAINER/PROTO"
            parts = str(port).split("/")[0].split(":")
            yield (int(parts[-2]) if len(parts) > 1 else None), int(parts[-1])


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        return dict.fromkeys(depends, "service_started")
    return {name: (how or {}).get("condition", "service_started") for name, how in depends.items()}


def _option(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} missing from {argv}"
    return argv[argv.index(name) + 1]


# -- the tests ----------------------------------------------------------------------------------


def test_compose_file_is_valid(compose: list[str]) -> None:
    done = _run([*compose, "config", "-q"])
    assert done.returncode == 0, f"{' '.join(compose)} config -q failed:\n{done.stderr}"


def test_the_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {"rabbitmq", "postgres", "web", "worker"}


def test_rabbitmq_has_a_healthcheck_and_the_management_ui(
    services: dict[str, dict[str, Any]],
) -> None:
    rabbitmq = services["rabbitmq"]
    assert rabbitmq["image"] == "rabbitmq:3.13-management"
    check = _healthcheck(rabbitmq)
    assert "rabbitmq-diagnostics" in check
    assert "ping" in check
    targets = {target for _, target in _ports(rabbitmq)}
    assert {5672, 15672} <= targets


@pytest.mark.parametrize("name", ["web", "worker"])
def test_web_and_worker_use_the_rabbitmq_service(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    url = urlsplit(_environment(services[name])["SIGNALBUS_BROKER_URL"])
    assert url.scheme == "amqp"
    assert url.hostname == "rabbitmq"
    assert url.port == 5672
    assert _depends_on(services[name]).get("rabbitmq") == "service_healthy"


def test_the_worker(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    argv = _argv(worker.get("command"))
    assert argv[:2] == ["signalbus", "worker"]
    assert _option(argv, "--settings") == "demoproj.settings"
    assert _option(argv, "--host") == "0.0.0.0"
    port = _option(argv, "--port")
    check = " ".join(_healthcheck(worker))
    assert f"127.0.0.1:{port}/readyz" in check
    assert "curl" not in check  # python:3.11-slim has none
    assert worker.get("stop_grace_period")
    assert "build" in worker


def test_the_web_app(services: dict[str, dict[str, Any]]) -> None:
    web = services["web"]
    command = " ".join(_argv(web.get("command")))
    assert "manage.py migrate" in command
    assert "uvicorn demoproj.asgi:application" in command
    assert "--host 0.0.0.0 --port 8000" in command
    assert "127.0.0.1:8000/" in " ".join(_healthcheck(web))
    assert "build" in web


def test_the_browser_reaches_the_worker_and_the_web_app(
    services: dict[str, dict[str, Any]],
) -> None:
    """The page's events URL and origin are ports that compose publishes."""
    worker_port = int(_option(_argv(services["worker"]["command"]), "--port"))
    for name in ("web", "worker"):  # the page gets the URL from web, the grant from worker
        env = _environment(services[name])
        events = urlsplit(env["SIGNALBUS_DEMO_EVENTS_URL"])
        origin = urlsplit(env["SIGNALBUS_DEMO_ORIGIN"])
        assert events.hostname in {"localhost", "127.0.0.1"}
        assert events.path == "/events"
        assert parse_qs(events.query) == {"topic": ["items.item.#"]}
        assert origin.hostname in {"localhost", "127.0.0.1"}
        assert (events.port, worker_port) in set(_ports(services["worker"]))
        assert (origin.port, 8000) in set(_ports(services["web"]))


def test_postgres(services: dict[str, dict[str, Any]]) -> None:
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(_healthcheck(postgres))
    db = _environment(postgres)
    env = _environment(services["web"])
    assert env["SIGNALBUS_DEMO_DB_HOST"] == "postgres"
    assert env["SIGNALBUS_DEMO_DB_NAME"] == db["POSTGRES_DB"]
    assert env["SIGNALBUS_DEMO_DB_USER"] == db["POSTGRES_USER"]
    assert env["SIGNALBUS_DEMO_DB_PASSWORD"] == db["POSTGRES_PASSWORD"]
    assert _depends_on(services["web"]).get("postgres") == "service_healthy"


def _example_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str]
) -> dict[str, Any]:
    """The example's settings module, run with exactly these demo variables set."""
    for name in list(os.environ):
        if name.startswith("SIGNALBUS_DEMO_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SIGNALBUS_DEMO_DIR", str(tmp_path))
    return runpy.run_path(str(SETTINGS_FILE))


def test_the_example_settings_follow_the_compose_environment(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = _environment(services["web"])
    settings = _example_settings(monkeypatch, tmp_path, env)
    db = settings["DATABASES"]["default"]
    postgres = _environment(services["postgres"])
    assert db["ENGINE"] == "django.db.backends.postgresql"
    assert (db["HOST"], db["NAME"], db["USER"], db["PASSWORD"]) == (
        "postgres",
        postgres["POSTGRES_DB"],
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
    )
    assert settings["SIGNALBUS"]["ALLOWED_ORIGINS"] == [env["SIGNALBUS_DEMO_ORIGIN"]]
    assert urlsplit(env["SIGNALBUS_DEMO_ORIGIN"]).hostname in settings["ALLOWED_HOSTS"]
    assert settings["DEMO_EVENTS_URL"] == env["SIGNALBUS_DEMO_EVENTS_URL"]


def test_the_example_settings_stay_on_sqlite_without_a_db_host(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = _example_settings(monkeypatch, tmp_path, {})
    db = settings["DATABASES"]["default"]
    assert db["ENGINE"] == "django.db.backends.sqlite3"
    assert db["NAME"] == tmp_path / "db.sqlite3"
