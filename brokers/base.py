"""The transport protocol every broker adapter implements.

A `Broker` is one process's handle on a transport: `Broker.publish` is called
from any thread of a Django process; `Broker.consumer` gives the worker an
asyncio `Consumer` that feeds its hub; `Broker.durable_consumer` gives it the
queues of its ``@signalbus.subscriber`` functions where the transport keeps
any (AMQP), each message to be settled as a `Delivery`. Adapters map their
driver's errors to `signalbus.errors` at this edge, so nothing above sees a
pika or zmq exception.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

from signalbus.errors import InvalidEvent

__all__ = [
    "Broker",
    "Consumer",
    "Deliver",
    "Delivery",
    "DurableConsumer",
    "Handle",
    "deliver_or_log",
]

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


class Consumer(abc.ABC):
    """The worker's side of a transport: a stream of (topic, body) for some patterns.

    ``deliver`` raises `signalbus.errors.InvalidEvent` for a message that is not an
    event: the consumer keeps it aside (dead-letters it) where the transport can.
    """

    # Called on the loop when the transport knows events were lost (a gap in the stream).
    on_gap: Callable[[], None] | None = None
    # Messages handed over between two turns of the event loop: the streams write in
    # between, so a client that keeps up never has more than this queued (< CLIENT_QUEUE).
    yield_every: int = 64

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


class Delivery(abc.ABC):
    """One message of a durable subscription, settled once, on the consumer's loop: `ack`
    when handled, `retry` after a failure, `dead_letter` when the retries are spent."""

    def __init__(self, subscription: str, topic: str, body: bytes, attempt: int) -> None:
        self.subscription = subscription
        self.topic = topic
        self.body = body
        # 1 on the first delivery; counted by the transport, across workers and restarts.
        self.attempt = attempt

    @abc.abstractmethod
    def ack(self) -> None:
        """Handled: the transport forgets it."""

    @abc.abstractmethod
    def retry(self, delay: float, error: str) -> None:
        """Deliver it again, as attempt ``attempt + 1``, after about ``delay`` seconds."""

    @abc.abstractmethod
    def dead_letter(self, error: str) -> None:
        """Give up on it: keep it aside with ``error`` as the reason, where the transport can."""


# Called on the consumer's loop with each delivery; settles it then or later, on the loop.
Handle = Callable[[Delivery], None]


class DurableConsumer(abc.ABC):
    """A queue per subscription that outlives the worker and is shared by every worker:
    each message goes to one of them, and stays queued until settled."""

    @property
    @abc.abstractmethod
    def ready(self) -> bool:
        """Whether deliveries can arrive now (``/readyz``)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Declare the queues and consume; raise a `signalbus.SignalbusError` for the CLI."""

    @abc.abstractmethod
    async def run(self, handle: Handle) -> None:
        """Hand every delivery to ``handle`` until cancelled, recovering from faults it can."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Wait (bounded) for settlements under way, then release the connection."""


class Broker(abc.ABC):
    """One process's handle on a transport, chosen by URL scheme (see `brokers.registry`)."""

    scheme: ClassVar[str]

    def __init__(self, url: str) -> None:
        self.url = url
        # Events the transport discarded by design (at-most-once transports), logged each time.
        self.dropped = 0

    @abc.abstractmethod
    def publish(self, topic: str, body: bytes) -> None:
        """Send one encoded event. Thread-safe; raises `signalbus.errors.BrokerError`."""

    def submit(self, topic: str, body: bytes) -> None:
        """Send one encoded event without waiting for the transport's answer, so that the
        events one commit releases share round trips; a failure is logged and counted by the
        transport. Transports that have no answer to wait for simply publish."""
        self.publish(topic, body)

    @abc.abstractmethod
    def consumer(self, patterns: Sequence[str]) -> Consumer:
        """A consumer of the events whose topics match ``patterns``."""

    def durable_consumer(
        self, subscriptions: Mapping[str, str], *, prefetch: int
    ) -> DurableConsumer | None:
        """The durable queues of ``subscriptions`` (name -> pattern), ``prefetch`` unsettled
        deliveries at a time for each. None where the transport keeps nothing for an absent
        consumer: the worker then runs subscribers from its own stream, at most once."""
        return None

    def close(self) -> None:  # noqa: B027 - optional for transports holding nothing
        """Flush what is pending (bounded) and release the connection."""

    def __repr__(self) -> str:
        from signalbus.conf import mask_url

        return f"<{type(self).__name__} {mask_url(self.url)}>"
