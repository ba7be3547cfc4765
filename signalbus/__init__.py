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
    InvalidToken,
    InvalidTopic,
    PublishError,
    SignalbusError,
    UnknownBroker,
)
from .events import Event
from .topics import matches, pattern_within, pk_word, validate_pattern, validate_topic

if TYPE_CHECKING:
    from bridges.django_signals import apublish, bind_model, bind_signal, publish

    from .subscribers import subscriber

__version__ = "0.1.0"

__all__ = [
    "BrokerError",
    "BrokerUnavailable",
    "ConfigurationError",
    "Event",
    "InvalidEvent",
    "InvalidToken",
    "InvalidTopic",
    "PublishError",
    "SignalbusError",
    "UnknownBroker",
    "apublish",
    "bind_model",
    "bind_signal",
    "matches",
    "pattern_within",
    "pk_word",
    "publish",
    "subscriber",
    "validate_pattern",
    "validate_topic",
]

# name -> the module that defines it, imported on first use.
_LAZY = {
    "publish": "bridges.django_signals",
    "apublish": "bridges.django_signals",
    "bind_model": "bridges.django_signals",
    "bind_signal": "bridges.django_signals",
    "subscriber": "signalbus.subscribers",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'signalbus' has no attribute {name!r}")
