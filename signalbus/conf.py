"""``settings.SIGNALBUS``, read when first needed and checked once (DESIGN.md, "Settings").

Nothing is read at import: a module that imports signalbus before Django is
configured still works, and tests can override settings per case.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings as django_settings

from .errors import ConfigurationError, InvalidEvent
from .events import check_text
from .topics import validate_pattern

__all__ = [
    "DEFAULT_BROKER_URL",
    "Settings",
    "broker_url",
    "configured_settings",
    "get_settings",
    "mask_url",
]

DEFAULT_BROKER_URL = "zmq://127.0.0.1:5560"
DEFAULT_EVENTS_URL = "http://127.0.0.1:8001/events"
ENV_BROKER_URL = "SIGNALBUS_BROKER_URL"

_KNOWN = {
    "BROKER_URL",
    "MODELS",
    "PUBLIC_TOPICS",
    "AUTHORIZE",
    "ALLOWED_ORIGINS",
    "REPLAY_BUFFER",
    "CLIENT_QUEUE",
    "KEEPALIVE",
    "RETRY_MS",
    "SOURCE",
    "ZMQ_CONNECT_TIMEOUT",
    "EXCHANGE",
    "PUBLISH_TIMEOUT",
    "MAX_MESSAGE_BYTES",
    "SUBSCRIBERS",
    "SUBSCRIBER_THREADS",
    "EVENTS_URL",
    "MAX_TOPICS",
    "MAX_CONNECTIONS",
    "MAX_CONNECTIONS_PER_USER",
    "MAX_CONNECTIONS_PER_ADDRESS",
    "MAX_HEADER_BYTES",
    "HEADER_TIMEOUT",
}


@dataclass(frozen=True)
class Settings:
    """The checked ``SIGNALBUS`` dict; the defaults are the documented ones."""

    broker_url: str = DEFAULT_BROKER_URL
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    public_topics: tuple[str, ...] = ()
    authorize: Callable[[Any, str], bool] | None = None
    allowed_origins: tuple[str, ...] = ()
    replay_buffer: int = 10_000
    client_queue: int = 1_000
    keepalive: float = 15.0
    retry_ms: int = 3_000
    source: str | None = None
    zmq_connect_timeout: float = 1.0
    exchange: str = "signalbus"
    publish_timeout: float = 10.0
    max_message_bytes: int = 1 << 20
    subscribers: tuple[str, ...] = ()
    subscriber_threads: int = 4
    events_url: str = DEFAULT_EVENTS_URL
    # Limits of one worker process (README, "Limits").
    max_topics: int = 32
    max_connections: int = 10_000
    max_connections_per_user: int = 32
    max_connections_per_address: int = 1_000
    max_header_bytes: int = 32_768
    header_timeout: float = 10.0


_DEFAULTS = Settings()


def _positive(raw: Mapping[str, Any], key: str) -> Any:
    """``SIGNALBUS[key]``, a positive number of the type of its default (the field's)."""
    default = getattr(_DEFAULTS, key.lower())
    value = raw.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise ConfigurationError(f"SIGNALBUS[{key!r}] must be a positive number, not {value!r}")
    return type(default)(value)


def _patterns(raw: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = raw.get(key, ())
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigurationError(f"SIGNALBUS[{key!r}] must be a list of patterns, not {value!r}")
    try:
        return tuple(validate_pattern(p) for p in value)
    except ValueError as exc:
        raise ConfigurationError(f"SIGNALBUS[{key!r}]: {exc}") from None


def _source(raw: Mapping[str, Any]) -> str | None:
    """``SOURCE``, checked once here instead of in every event (it goes into SSE lines);
    empty or unset means the default, ``//<hostname>``."""
    value = raw.get("SOURCE") or None
    if value is None:
        return None
    try:
        return check_text("source", value)
    except InvalidEvent:
        raise ConfigurationError(
            f"SIGNALBUS['SOURCE'] must be a string without CR, LF or NUL, not {value!r:.80}"
        ) from None


def _is_module_path(value: object) -> bool:
    return isinstance(value, str) and all(part.isidentifier() for part in value.split("."))


def _modules(raw: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = raw.get(key, ())
    if (
        isinstance(value, str)
        or not isinstance(value, Sequence)
        or not all(_is_module_path(m) for m in value)
    ):
        raise ConfigurationError(f"SIGNALBUS[{key!r}] must be a list of dotted module paths")
    return tuple(value)


def _callable(raw: Mapping[str, Any], key: str) -> Callable[[Any, str], bool] | None:
    value = raw.get(key)
    if value is None or callable(value):
        return value
    if isinstance(value, str):
        from django.utils.module_loading import import_string

        try:
            loaded: Callable[[Any, str], bool] = import_string(value)
        except ImportError as exc:
            message = f"SIGNALBUS[{key!r}]: cannot import {value!r}: {exc}"
            raise ConfigurationError(message) from None
        return loaded
    raise ConfigurationError(f"SIGNALBUS[{key!r}] must be a callable or its dotted path")


def _events_url(raw: Mapping[str, Any]) -> str:
    value = raw.get("EVENTS_URL", DEFAULT_EVENTS_URL)
    if not isinstance(value, str) or not value or "?" in value or "#" in value:
        raise ConfigurationError(
            f"SIGNALBUS['EVENTS_URL'] must be the worker's /events URL with no query, not {value!r}"
        )
    return value


def parse_settings(raw: Mapping[str, Any]) -> Settings:
    """Check a ``SIGNALBUS`` dict; `ConfigurationError` names the first bad key."""
    if not isinstance(raw, Mapping):
        raise ConfigurationError("settings.SIGNALBUS must be a dict")
    unknown = sorted(set(raw) - _KNOWN)
    if unknown:
        raise ConfigurationError(
            f"unknown SIGNALBUS key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN))}"
        )
    models = raw.get("MODELS", {})
    if not isinstance(models, Mapping):
        raise ConfigurationError("SIGNALBUS['MODELS'] must map 'app_label.Model' to options")
    origins = raw.get("ALLOWED_ORIGINS", ())
    if (
        isinstance(origins, str)
        or not isinstance(origins, Sequence)
        or not all(isinstance(o, str) for o in origins)
    ):
        raise ConfigurationError("SIGNALBUS['ALLOWED_ORIGINS'] must be a list of origins")
    return Settings(
        broker_url=str(raw.get("BROKER_URL", DEFAULT_BROKER_URL)),
        models=models,
        public_topics=_patterns(raw, "PUBLIC_TOPICS"),
        authorize=_callable(raw, "AUTHORIZE"),
        allowed_origins=tuple(o.rstrip("/") for o in origins),
        replay_buffer=_positive(raw, "REPLAY_BUFFER"),
        client_queue=_positive(raw, "CLIENT_QUEUE"),
        keepalive=_positive(raw, "KEEPALIVE"),
        retry_ms=_positive(raw, "RETRY_MS"),
        source=_source(raw),
        zmq_connect_timeout=_positive(raw, "ZMQ_CONNECT_TIMEOUT"),
        exchange=str(raw.get("EXCHANGE", "signalbus")),
        publish_timeout=_positive(raw, "PUBLISH_TIMEOUT"),
        max_message_bytes=_positive(raw, "MAX_MESSAGE_BYTES"),
        subscribers=_modules(raw, "SUBSCRIBERS"),
        subscriber_threads=_positive(raw, "SUBSCRIBER_THREADS"),
        events_url=_events_url(raw),
        max_topics=_positive(raw, "MAX_TOPICS"),
        max_connections=_positive(raw, "MAX_CONNECTIONS"),
        max_connections_per_user=_positive(raw, "MAX_CONNECTIONS_PER_USER"),
        max_connections_per_address=_positive(raw, "MAX_CONNECTIONS_PER_ADDRESS"),
        max_header_bytes=_positive(raw, "MAX_HEADER_BYTES"),
        header_timeout=_positive(raw, "HEADER_TIMEOUT"),
    )


class _Checked:
    """The last ``SIGNALBUS`` dict checked, with the result: every event reads the settings,
    so they are parsed once per dict (``override_settings`` gives a new dict, a new parse).
    One tuple, swapped whole, so that a thread never sees one dict with another's result."""

    last: tuple[object, Settings] | None = None


# Django's LazySettings keeps each setting it has read in its own __dict__ and forgets it
# whenever a setting changes (override_settings included); reading it there skips its
# Python-level __getattribute__, which costs an event more than the rest of this lookup.
_read_settings: dict[str, Any] = object.__getattribute__(django_settings, "__dict__")


def get_settings() -> Settings:
    """The project's settings, checked. Needs Django configured."""
    raw = _read_settings.get("SIGNALBUS")
    if raw is None:  # not read since the last change, or not set
        raw = getattr(django_settings, "SIGNALBUS", {})
    last = _Checked.last
    if last is None or last[0] is not raw:
        last = _Checked.last = (raw, parse_settings(raw))
    return last[1]


def configured_settings() -> Settings | None:
    """``SIGNALBUS`` when Django is configured, else None: a plain script or a test of an
    adapter needs no Django project, and then the adapters' own defaults apply."""
    return get_settings() if django_settings.configured else None


def broker_url(cli: str | None = None, configured: Settings | None = None) -> str:
    """The broker URL, first found: ``--broker``, ``$SIGNALBUS_BROKER_URL``, setting, default."""
    if cli:
        return cli
    env = os.environ.get(ENV_BROKER_URL)
    if env:
        return env
    return (configured or get_settings()).broker_url


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``**``, fit for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    # Rebuilt from the raw netloc, not hostname/port: those drop an IPv6 address's
    # brackets and raise on a bad port, and the URL must still be shown, masked.
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    netloc = f"{userinfo.partition(':')[0]}:**@{hostport}"
    return urlunsplit(parts._replace(netloc=netloc))
