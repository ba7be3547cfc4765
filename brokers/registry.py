"""Brokers by URL scheme, through the entry-point group ``signalbus.brokers``.

A third party adds a transport by declaring an entry point in that group; the
built-in table below is the fallback for a source tree that is not installed.
Modules are imported only when their scheme is used, so a project on 0MQ
never imports pika.
"""

from __future__ import annotations

import difflib
from importlib import import_module
from importlib.metadata import entry_points
from urllib.parse import urlsplit

from signalbus.conf import mask_url
from signalbus.errors import ConfigurationError, UnknownBroker

from .base import Broker

__all__ = ["broker_class", "open_broker", "schemes"]

GROUP = "signalbus.brokers"
BUILTIN = {
    "memory": "brokers.memory:MemoryBroker",
    "zmq": "brokers.zeromq:ZeroMQBroker",
    "amqp": "brokers.amqp:AMQPBroker",
    "amqps": "brokers.amqp:AMQPBroker",
}


def schemes() -> dict[str, str]:
    """Every known scheme and the ``module:Class`` that serves it."""
    table = dict(BUILTIN)
    table.update({ep.name: ep.value for ep in entry_points(group=GROUP)})
    return table


def broker_class(url: str) -> type[Broker]:
    """The adapter class for ``url``; `UnknownBroker` suggests the nearest known scheme."""
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError as exc:
        raise ConfigurationError(f"bad broker URL {mask_url(url)!r}: {exc}") from None
    table = schemes()
    target = table.get(scheme)
    if target is None:
        known = ", ".join(sorted(table))
        hint = difflib.get_close_matches(scheme, table, n=1)
        did_you_mean = f" Did you mean {hint[0]}://?" if hint else ""
        shown = f"{scheme}://" if scheme else "none"
        raise UnknownBroker(
            f"no broker for scheme {shown} in {mask_url(url)!r}; known: {known}.{did_you_mean}"
        )
    module_name, _, attr = target.partition(":")
    try:
        cls: type[Broker] = getattr(import_module(module_name), attr)
    except ImportError as exc:
        raise ConfigurationError(
            f"the {scheme}:// broker needs {exc.name or module_name}: pip install 'signalbus'"
        ) from None
    return cls


def open_broker(url: str) -> Broker:
    """A broker for ``url``; nothing is connected until first used."""
    return broker_class(url)(url)
