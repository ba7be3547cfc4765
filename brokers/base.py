"""The transport protocol every broker adapter implements.

A `Broker` is one process's handle on a transport: `Broker.publish` is called
from any thread of a Django process; `Broker.consumer` gives the worker an
asyncio `Consumer` that feeds its hub. Adapters map their driver's errors to
`signalbus.errors` at this edge, so nothing above sees a pika or zmq exception.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Sequence
from typing import ClassVar

from signalbus.errors import InvalidEvent

__all__ = ["Broker", "Capabilities", "Consumer", "Deliver", "deliver_or_log"]

logger = logging.getLogger("signalbus.brokers")

# Called on the consumer's event loop with (topic, body) for every message.
Deliver = Callable[[str, bytes], None]


def deliver_or_log(deliver: Deliver, topic: str, body: bytes) -> bool:
    """For transports with nowhere to keep a bad message: log it, and go on with the next."""
    try:
        deliver(topic, body)
    except InvalidEvent as exc:
        logger.warning("message on %s ignored: %s", topic, exc)
        return False
    except Exception:
        logger.exception("delivering a message on %s failed; the worker goes on", topic)
        return False
    return True


class Capabilities:
    """What a transport promises, as data the docs and the worker can read."""

    def __init__(self, *, durable: bool, acknowledged: bool, cross_process: bool) -> None:
        self.durable = durable
        self.acknowledged = acknowledged
        self.cross_process = cross_process


class Consumer(abc.ABC):
    """The worker's side of a transport: a stream of (topic, body) for some patterns.

    ``deliver`` raises `signalbus.errors.InvalidEvent` for a message that is not an
    event: the consumer keeps it aside (dead-letters it) where the transport can.
    """

    # Called on the loop when the transport knows events were lost (a gap in the stream).
    on_gap: Callable[[], None] | None = None

    @property
    @abc.abstractmethod
    def ready(self) -> bool:
        """Whether messages can arrive now (``/readyz``)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Bind or connect; raise a `signalbus.SignalbusError` the CLI can print in one line."""

    @abc.abstractmethod
    async def run(self, deliver: Deliver) -> None:
        """Hand every message to ``deliver`` until cancelled, recovering from faults it can."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the connection; safe to call more than once."""


class Broker(abc.ABC):
    """One process's handle on a transport, chosen by URL scheme (see `brokers.registry`)."""

    scheme: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    def __init__(self, url: str) -> None:
        self.url = url
        # Events the transport discarded by design (at-most-once transports), logged each time.
        self.dropped = 0

    @abc.abstractmethod
    def publish(self, topic: str, body: bytes) -> None:
        """Send one encoded event. Thread-safe; raises `signalbus.errors.BrokerError`."""

    @abc.abstractmethod
    def consumer(self, patterns: Sequence[str]) -> Consumer:
        """A consumer of the events whose topics match ``patterns``."""

    def close(self) -> None:  # noqa: B027 - optional for transports holding nothing
        """Flush what is pending (bounded) and release the connection."""

    def __repr__(self) -> str:
        from signalbus.conf import mask_url

        return f"<{type(self).__name__} {mask_url(self.url)}>"
