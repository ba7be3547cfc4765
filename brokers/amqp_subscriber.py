"""The worker's ``@signalbus.subscriber`` queues on RabbitMQ: durable, shared by every worker.

For a subscriber NAME with pattern P, on the exchange ``signalbus`` (queue names
begin with the exchange's name, so that two buses on one vhost never share one):

- ``signalbus.sub.NAME``, bound to the exchange with P. Every worker consumes it
  and RabbitMQ gives each message to one of them, ``prefetch`` unsettled at a time
  per worker (its thread pool's size); a message is acked once the function
  returned.
- ``signalbus.sub.NAME.retry``: after a failure the worker publishes a copy here,
  with ``x-signalbus-attempts`` and a per-message TTL (the backoff), waits for
  the broker's confirm, then acks the original. When the TTL runs out RabbitMQ
  dead-letters the copy back to ``signalbus.sub.NAME``. The wait lives in
  RabbitMQ, not in a sleeping thread: it survives a worker crash and holds no
  prefetch slot. RabbitMQ expires messages at the head of a queue only, so a
  retry waits at least its own delay and at most the longest one queued before it.
- retries spent: a copy with the reason (``x-signalbus-error``,
  ``x-signalbus-subscriber``, ``x-signalbus-attempts``) goes to the ``signalbus.dlx``
  exchange, routed by the event's topic, and is kept in the ``signalbus.dead-letters``
  queue: the ones `brokers.amqp_consumer` uses for messages that are not events.

Quorum queues, not classic ones: they hold work that must not be lost, and a
quorum queue is replicated across a cluster's nodes (RabbitMQ's durable queue of
choice; classic mirroring is deprecated), so a node failure loses neither the
queue nor its messages (README, "RabbitMQ high availability"). Two of their
features are used: ``x-delivery-limit`` sends a message that keeps killing
workers (a crash mid-call returns it uncounted by us) to ``signalbus.dlx``
instead of looping for ever, and at-least-once dead-lettering moves a retry
back with no window for loss. On a single node they cost little more than
classic queues. RabbitMQ 3.10 or later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Mapping
from functools import partial
from typing import Any

import pika

from signalbus.conf import mask_url
from signalbus.errors import ConfigurationError
from signalbus.topics import validate_pattern

from .amqp_connection import LoopConnection
from .amqp_consumer import DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE
from .base import Delivery, DurableConsumer, Handle

__all__ = ["ATTEMPTS", "ERROR", "SUBSCRIBER", "AMQPDelivery", "AMQPSubscriptions", "queue_name"]

logger = logging.getLogger("signalbus.brokers.amqp")

ATTEMPTS = "x-signalbus-attempts"  # attempts made so far, on a retry and on a dead letter
ERROR = "x-signalbus-error"  # the last failure: "module.ExceptionClass: message"
SUBSCRIBER = "x-signalbus-subscriber"
QUEUE = "x-signalbus-queue"
TOPIC = "x-signalbus-topic"  # a retry comes back routed by queue name: the topic rides along
CONFIRM_WAIT = 0.5  # seconds a stopping worker waits for the confirms of its last copies
DELIVERY_LIMIT = 20  # returns to the queue (worker crashes) before RabbitMQ gives up on one
# RabbitMQ's own, renewed on each hop: a copy starts without them.
_DROPPED_HEADERS = ("x-death", "x-first-death-", "x-last-death-", "x-delivery-count")


def queue_name(exchange: str, subscription: str) -> str:
    """``<exchange>.sub.<name>``: ``signalbus.sub.NAME`` on the default exchange."""
    name = f"{exchange}.sub.{subscription}"
    if len(f"{name}.retry".encode()) > 255:
        raise ConfigurationError(
            f"subscriber name {subscription!r} is too long for a queue on exchange {exchange!r}"
            " (255 bytes with '.sub.' and '.retry'); pass a shorter name="
        )
    return name


class AMQPDelivery(Delivery):
    """A message of ``signalbus.sub.NAME``, on the channel it came on."""

    def __init__(
        self,
        owner: AMQPSubscriptions,
        channel: Any,
        method: Any,
        properties: Any,
        subscription: str,
        body: bytes,
    ) -> None:
        headers = dict(properties.headers or {})
        made = headers.get(ATTEMPTS, 0)
        topic = headers.get(TOPIC) or method.routing_key
        super().__init__(subscription, str(topic), body, (made if isinstance(made, int) else 0) + 1)
        self.owner = owner
        self.channel = channel
        self.tag: int = method.delivery_tag
        self.properties = properties
        self.headers = headers

    def ack(self) -> None:
        self.owner.ack(self)

    def retry(self, delay: float, error: str) -> None:
        queue = self.owner.queues[self.subscription] + ".retry"
        headers = {ATTEMPTS: self.attempt, ERROR: error[:1000], TOPIC: self.topic}
        self.owner.forward(self, "", queue, headers, expiration=max(1, round(delay * 1000)))

    def dead_letter(self, error: str) -> None:
        headers = {
            ATTEMPTS: self.attempt,
            ERROR: error[:1000],
            SUBSCRIBER: self.subscription,
            QUEUE: self.owner.queues[self.subscription],
        }
        self.owner.forward(self, DEAD_LETTER_EXCHANGE, self.topic, headers)


class AMQPSubscriptions(DurableConsumer):
    """One connection and channel for all of a worker's subscriber queues."""

    def __init__(
        self,
        url: str,
        params: Any,
        exchange: str,
        subscriptions: Mapping[str, str],
        *,
        prefetch: int,
    ) -> None:
        self.url = url
        self.exchange = exchange
        self.patterns = {name: validate_pattern(p) for name, p in subscriptions.items()}
        self.queues = {name: queue_name(exchange, name) for name in subscriptions}
        self.prefetch = prefetch
        self._link = LoopConnection(url, params, self._on_channel, what="AMQP subscribers")
        self._inbox: asyncio.Queue[AMQPDelivery] | None = None
        # Copies sent to the retry queue or the dead letters, by publish sequence number:
        # each original is acked once the broker confirmed its copy.
        self._unconfirmed: OrderedDict[int, AMQPDelivery] = OrderedDict()
        self._published = 0
        self._all_confirmed: asyncio.Event | None = None

    @property
    def ready(self) -> bool:
        return self._link.ready

    async def start(self) -> None:
        self._inbox = asyncio.Queue()
        await self._link.open()
        logger.info(
            "AMQP subscribers consuming %s on %s",
            ", ".join(self.queues.values()),
            mask_url(self.url),
        )

    async def run(self, handle: Handle) -> None:
        if self._inbox is None:
            await self.start()
        inbox = self._inbox
        assert inbox is not None
        while True:
            delivery = await inbox.get()
            try:
                handle(delivery)
            except Exception as exc:  # a bug above us: keep the message where one can see it
                logger.exception("handling a message of %s failed", delivery.subscription)
                delivery.dead_letter(f"{type(exc).__name__}: {exc}")

    async def aclose(self) -> None:
        if self._unconfirmed and self._link.channel is not None:
            # The last retries and dead letters: their originals are acked once confirmed.
            self._all_confirmed = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_confirmed.wait(), CONFIRM_WAIT)
        await self._link.close()
        self._inbox = None

    # -- settling, on the loop ------------------------------------------------------------------

    def ack(self, delivery: AMQPDelivery) -> None:
        if self._current(delivery):
            delivery.channel.basic_ack(delivery.tag)

    def forward(
        self,
        delivery: AMQPDelivery,
        exchange: str,
        routing_key: str,
        headers: dict[str, Any],
        *,
        expiration: int | None = None,
    ) -> None:
        """Publish a copy of ``delivery`` with ``headers``; ack the original once confirmed."""
        if not self._current(delivery):
            return
        kept = {k: v for k, v in delivery.headers.items() if not k.startswith(_DROPPED_HEADERS)}
        props = delivery.properties
        copy = pika.BasicProperties(
            content_type=props.content_type,
            message_id=props.message_id,
            type=props.type,
            timestamp=props.timestamp,
            delivery_mode=pika.DeliveryMode.Persistent.value,
            headers={**kept, **headers},
            expiration=None if expiration is None else str(expiration),
        )
        delivery.channel.basic_publish(exchange, routing_key, delivery.body, copy)
        self._published += 1
        self._unconfirmed[self._published] = delivery

    def _current(self, delivery: AMQPDelivery) -> bool:
        """Whether its channel still lives; if not, the broker has queued it again already."""
        channel = delivery.channel
        return channel is self._link.channel and channel is not None and channel.is_open

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        for delivery in self._confirmed(method.delivery_tag, method.multiple):
            if acked:
                self.ack(delivery)
            elif self._current(delivery):
                logger.warning(
                    "the broker refused a copy of a message of %s (basic.nack); it is queued again",
                    delivery.subscription,
                )
                delivery.channel.basic_nack(delivery.tag, requeue=True)
        if not self._unconfirmed and self._all_confirmed is not None:
            self._all_confirmed.set()

    def _confirmed(self, tag: int, multiple: bool) -> list[AMQPDelivery]:
        if not multiple:
            delivery = self._unconfirmed.pop(tag, None)
            return [] if delivery is None else [delivery]
        done = []
        while self._unconfirmed and next(iter(self._unconfirmed)) <= tag:
            done.append(self._unconfirmed.popitem(last=False)[1])
        return done

    # -- each new channel: confirms, prefetch, the queues, then consume -------------------------

    def _on_channel(self, channel: Any) -> None:
        # Unconfirmed copies went with the old channel, and their originals back to the queue.
        self._unconfirmed.clear()
        self._published = 0
        channel.add_on_cancel_callback(self._on_cancelled)
        channel.confirm_delivery(self._on_confirm, callback=lambda _frame: self._declare(channel))

    def _declare(self, channel: Any) -> None:
        """Every declaration at once: pika sends a channel's calls one after the other, and the
        first that fails closes the channel, so the last answer means all succeeded."""
        channel.basic_qos(prefetch_count=self.prefetch, callback=_ignore)
        channel.exchange_declare(self.exchange, "topic", durable=True, callback=_ignore)
        channel.exchange_declare(DEAD_LETTER_EXCHANGE, "topic", durable=True, callback=_ignore)
        # As `brokers.amqp_consumer` declares it: a queue's arguments must agree everywhere.
        channel.queue_declare(DEAD_LETTER_QUEUE, durable=True, callback=_ignore)
        channel.queue_bind(DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE, "#", callback=_ignore)
        for name, queue in self.queues.items():
            channel.queue_declare(queue, durable=True, arguments=_main_args(), callback=_ignore)
            retry, retry_args = queue + ".retry", _retry_args(queue)
            channel.queue_declare(retry, durable=True, arguments=retry_args, callback=_ignore)
            channel.queue_bind(queue, self.exchange, self.patterns[name], callback=_ignore)
        names = list(self.queues)
        if not names:
            channel.basic_qos(prefetch_count=self.prefetch, callback=self._on_consuming)
        for name in names:
            on_message = partial(self._on_message, name)
            done = self._on_consuming if name == names[-1] else _ignore
            channel.basic_consume(self.queues[name], on_message, callback=done)

    def _on_consuming(self, _frame: Any) -> None:
        self._link.set_ready()

    def _on_message(
        self, subscription: str, channel: Any, method: Any, properties: Any, body: bytes
    ) -> None:
        if self._inbox is not None:
            delivery = AMQPDelivery(self, channel, method, properties, subscription, body)
            self._inbox.put_nowait(delivery)

    def _on_cancelled(self, _frame: Any) -> None:
        self._link.restart(RuntimeError("the broker cancelled a consumer (queue deleted?)"))


def _main_args() -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",  # at-least-once dead-lettering requires it
    }


def _retry_args(queue: str) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "",  # the default exchange: straight back to ``queue``
        "x-dead-letter-routing-key": queue,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def _ignore(_frame: Any) -> None:
    """An answer when another call follows (without a callback, pika sends some as nowait)."""
