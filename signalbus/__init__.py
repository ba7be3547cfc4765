"""signalbus: Django signals carried to browsers and other processes in real time.

``import signalbus`` loads no broker, web or Django-signal machinery: the
names below that need them are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigurationError,
    InvalidEvent,
    InvalidTopic,
    PublishError,
    SignalbusError,
    UnknownBroker,
)
from .events import Event
from .topics import matches, pattern_within, pk_word, validate_pattern, validate_topic

if TYPE_CHECKING:
    from bridges.django_signals import bind_model, bind_signal, publish

__version__ = "0.1.0"

__all__ = [
    "BrokerError",
    "BrokerUnavailable",
    "ConfigurationError",
    "Event",
    "InvalidEvent",
    "InvalidTopic",
    "PublishError",
    "SignalbusError",
    "UnknownBroker",
    "bind_model",
    "bind_signal",
    "matches",
    "pattern_within",
    "pk_word",
    "publish",
    "validate_pattern",
    "validate_topic",
]

_LAZY = {"publish", "bind_model", "bind_signal"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from bridges import django_signals

        return getattr(django_signals, name)
    raise AttributeError(f"module 'signalbus' has no attribute {name!r}")
