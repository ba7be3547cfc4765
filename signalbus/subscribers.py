"""``@signalbus.subscriber(pattern)``: functions the worker runs for the events that match.

The decorator only records the function; nothing runs in the process that imports
it. The worker imports the ``subscribers`` module of every installed app and the
modules listed in ``SIGNALBUS["SUBSCRIBERS"]`` (`discover`), then runs each function
in a thread pool (`bridges.remote`): on AMQP from a durable queue per subscriber
shared by every worker (each event handled once, at least once, with retries and a
dead letter); on 0MQ and ``memory://`` from the worker's own stream, at most once.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import import_module
from typing import Any, TypeVar

from .errors import ConfigurationError
from .events import Event
from .topics import validate_pattern

__all__ = ["DEFAULT_RETRIES", "Registry", "Subscriber", "discover", "registry", "subscriber"]

DEFAULT_RETRIES = 5
# A subscriber's name names its durable queue (``signalbus.sub.NAME``), so it keeps to
# characters every broker and every shell quote the same way.
_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,200}")

F = TypeVar("F", bound=Callable[[Event], Any])


@dataclass(frozen=True, slots=True)
class Subscriber:
    """One registered function, the pattern of the events it wants, and its retry budget."""

    name: str
    pattern: str
    func: Callable[[Event], Any]
    retries: int = DEFAULT_RETRIES

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ConfigurationError(
                f"subscriber name {self.name!r} is not 1 to 200 of A-Z a-z 0-9 _ . : -;"
                " pass name= to @signalbus.subscriber"
            )
        validate_pattern(self.pattern)
        retries = self.retries
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ConfigurationError(
                f"subscriber {self.name!r}: retries must be a whole number >= 0, not {retries!r}"
            )


def _where(func: Callable[..., Any]) -> str:
    return f"{func.__module__}.{func.__qualname__}"


class Registry:
    """Subscribers by name. The name is the durable queue's, so two functions may not share one:
    they would take turns at each other's events."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_name: dict[str, Subscriber] = {}

    def add(self, sub: Subscriber) -> Subscriber:
        with self._lock:
            taken = self._by_name.get(sub.name)
            if taken is not None:
                raise ConfigurationError(
                    f"two subscribers named {sub.name!r} ({_where(taken.func)} and"
                    f" {_where(sub.func)}); pass name= to tell them apart"
                )
            self._by_name[sub.name] = sub
        return sub

    def remove(self, name: str) -> None:
        with self._lock:
            self._by_name.pop(name, None)

    def all(self) -> list[Subscriber]:
        with self._lock:
            return list(self._by_name.values())

    def __iter__(self) -> Iterator[Subscriber]:
        return iter(self.all())

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name


# The process's subscribers. Module-level state on purpose, as Django's signals keep their
# receivers: a decorator that runs at import time needs one place to write to.
registry = Registry()


def subscriber(
    pattern: str, *, name: str | None = None, retries: int = DEFAULT_RETRIES
) -> Callable[[F], F]:
    """Register the decorated function to run in the worker for every event matching ``pattern``.

    ``name`` (default ``module.qualname``) names its queue; ``retries`` is how many times a
    raising call is tried again, with growing delays, before the event is dead-lettered.
    """
    validate_pattern(pattern)

    def register(func: F) -> F:
        registry.add(Subscriber(name or _where(func), pattern, func, retries))
        return func

    return register


def discover(modules: Sequence[str] = ()) -> list[Subscriber]:
    """Import every installed app's ``subscribers`` module, then ``modules``; all registered.

    Needs Django set up (the worker's composition root does it)."""
    from django.utils.module_loading import autodiscover_modules

    autodiscover_modules("subscribers")
    for module in modules:
        try:
            import_module(module)
        except ImportError as exc:
            raise ConfigurationError(
                f"SIGNALBUS['SUBSCRIBERS']: cannot import {module!r}: {exc}"
            ) from None
    return registry.all()
