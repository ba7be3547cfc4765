"""The worker's half of `brokers.amqp`: pika's ``AsyncioConnection`` on the worker's loop.

The connection, its recovery and its close are `brokers.amqp_connection.LoopConnection`'s;
this module declares the worker's queue on each new channel and consumes it.

Why on the loop and not in a thread of its own: ``deliver`` must run on the
worker's loop and each ack must go out on pika's; on one loop both are plain
calls, with no handoff in either direction and no lock. pika's asyncio adapter
connects and resolves names without blocking the loop, and the prefetch bounds
what one read can hand over. Messages wait in a queue that `AMQPConsumer.run`
empties one at a time, yielding between them as the other adapters do, so the
SSE streams write while a burst comes in.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from signalbus.conf import mask_url
from signalbus.errors import InvalidEvent, SignalbusError
from signalbus.topics import validate_pattern

from .amqp_connection import LoopConnection
from .base import Consumer, Deliver

__all__ = ["AMQPConsumer"]

logger = logging.getLogger("signalbus.brokers.amqp")

PREFETCH = 1_000  # unacked messages in flight: bounds the worker's backlog in memory


DEAD_LETTER_EXCHANGE = "signalbus.dlx"
DEAD_LETTER_QUEUE = "signalbus.dead-letters"
QUEUE_EXPIRES_MS = 300_000  # a worker's queue outlives a connection cut, not a dead worker
QUEUE_MAX_LENGTH = 100_000  # and stays bounded while nobody consumes it (oldest dropped)


@dataclass(frozen=True, slots=True)
class _Message:
    channel: Any
    tag: int
    topic: str
    body: bytes
    properties: Any


class AMQPConsumer(Consumer):
    """A queue of this worker's own, bound with each pattern; acked after ``deliver``.

    The queue is named by the worker and kept across connection cuts and broker
    restarts (durable, expiring ``QUEUE_EXPIRES_MS`` after its last consumer),
    so events published while the worker reconnects wait for it instead of
    being routed nowhere. An exclusive, auto-delete queue would vanish with the
    connection and lose them silently. Only when the queue itself is gone on
    reconnect (an outage longer than its expiry) does `on_gap` report the loss.
    """

    def __init__(
        self,
        url: str,
        params: Any,
        exchange: str,
        patterns: Sequence[str],
        *,
        prefetch: int = PREFETCH,
    ) -> None:
        self.url = url
        self.exchange = exchange
        self.patterns = tuple(validate_pattern(p) for p in patterns)
        self.prefetch = prefetch
        self.queue = f"signalbus.worker.{uuid.uuid4().hex[:16]}"
        self.failed = 0  # messages whose ``deliver`` raised: logged, counted, acked
        self.dead_lettered = 0  # messages that were not events: sent to signalbus.dlx
        self._declared = False  # the queue exists on the broker: redeclare passively
        self._lost = False  # the queue vanished while disconnected: a gap to report
        self._inbox: asyncio.Queue[_Message] | None = None
        self._acked = 0  # the last delivery tag acked on the current channel
        self._link = LoopConnection(
            url,
            params,
            self._on_channel,
            what="AMQP consumer",
            on_resumed=self._on_resumed,
            on_closing=self._on_closing,
        )

    @property
    def ready(self) -> bool:
        return self._link.ready

    async def start(self) -> None:
        self._inbox = asyncio.Queue()
        try:
            await self._link.open()  # closes the link itself, then raises the one-line error
        except SignalbusError:
            self._inbox = None
            raise

    async def run(self, deliver: Deliver) -> None:
        if self._inbox is None:
            await self.start()
        inbox = self._inbox
        assert inbox is not None
        ready = 0
        while True:
            message = await inbox.get()
            try:
                deliver(message.topic, message.body)
            except InvalidEvent as exc:
                self._dead_letter(message, str(exc))
            except Exception:
                # Acked anyway: a bad event must not stop the worker, nor come back forever.
                self.failed += 1
                logger.exception("delivering a message on %s failed; acked", message.topic)
            self._ack(message, last=inbox.empty())
            ready += 1
            if ready >= self.yield_every or inbox.empty():
                ready = 0
                await asyncio.sleep(0)  # let the streams write what was queued for them

    def _dead_letter(self, message: _Message, reason: str) -> None:
        """Keep what is not an event in ``signalbus.dead-letters``, with the reason, then ack."""
        self.dead_lettered += 1
        logger.warning("message on %s dead-lettered: %s", message.topic, reason)
        channel = message.channel
        if channel is not self._link.channel or not channel.is_open:
            return  # redelivered on the next connection, and judged again
        props = message.properties
        headers = dict(props.headers or {})
        headers.update({"x-signalbus-error": reason[:1000], "x-signalbus-queue": self.queue})
        props.headers = headers
        channel.basic_publish(DEAD_LETTER_EXCHANGE, message.topic, message.body, props)

    def _ack(self, message: _Message, *, last: bool) -> None:
        """Ack up to ``message``: at the end of a burst, or every half prefetch within one."""
        channel = message.channel
        if channel is not self._link.channel or not channel.is_open:
            return  # its channel is gone: the broker redelivers it on the next one
        if last or message.tag - self._acked >= self.prefetch // 2:
            channel.basic_ack(message.tag, multiple=True)
            self._acked = message.tag

    async def aclose(self) -> None:
        await self._link.close()  # `_on_closing` deletes the queue if the channel is open
        self._inbox = None

    def _on_closing(self, channel: Any) -> None:
        # A clean stop: nobody will consume this queue again.
        channel.queue_delete(self.queue)

    # -- each new channel: the protocol flow, one step per broker answer -------------------------

    def _on_channel(self, channel: Any) -> None:
        self._acked = 0
        channel.add_on_close_callback(self._on_channel_closed)  # after the link's own
        channel.add_on_cancel_callback(self._on_cancelled)
        channel.basic_qos(prefetch_count=self.prefetch, callback=self._on_qos_ok)

    def _on_qos_ok(self, _frame: Any) -> None:
        # Declared here too, so that a worker may start before any publisher.
        self._link.channel.exchange_declare(
            self.exchange, "topic", durable=True, callback=self._on_exchange_declareok
        )

    def _on_exchange_declareok(self, _frame: Any) -> None:
        self._link.channel.exchange_declare(
            DEAD_LETTER_EXCHANGE, "topic", durable=True, callback=self._on_dlx_declareok
        )

    def _on_dlx_declareok(self, _frame: Any) -> None:
        self._link.channel.queue_declare(DEAD_LETTER_QUEUE, durable=True, callback=self._on_dlq_ok)

    def _on_dlq_ok(self, _frame: Any) -> None:
        self._link.channel.queue_bind(
            DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE, "#", callback=self._declare_queue
        )

    def _declare_queue(self, _frame: Any) -> None:
        if self._declared:
            # Reconnecting: is the queue, and what was routed to it meanwhile, still there?
            # A 404 closes the channel; `_on_channel_closed` records the gap.
            self._link.channel.queue_declare(
                self.queue, passive=True, callback=self._on_queue_declareok
            )
            return
        self._link.channel.queue_declare(
            self.queue,
            durable=True,
            arguments={"x-expires": QUEUE_EXPIRES_MS, "x-max-length": QUEUE_MAX_LENGTH},
            callback=self._on_queue_declareok,
        )

    def _on_queue_declareok(self, _frame: Any) -> None:
        self._declared = True
        channel = self._link.channel
        for pattern in self.patterns[:-1]:
            channel.queue_bind(self.queue, self.exchange, pattern, callback=_ignore)
        if self.patterns:
            channel.queue_bind(
                self.queue, self.exchange, self.patterns[-1], callback=self._on_bindok
            )
        else:
            self._on_bindok(None)

    def _on_bindok(self, _frame: Any) -> None:
        self._link.channel.basic_consume(self.queue, self._on_message, callback=self._on_consume_ok)

    def _on_consume_ok(self, _frame: Any) -> None:
        self._link.set_ready()  # the first time, `start` returns; after a fault, `_on_resumed`

    def _on_resumed(self) -> None:
        if self._lost:
            self._lost = False
            logger.warning(
                "AMQP consumer on %s: its queue expired while disconnected; events published"
                " meanwhile are lost for this worker, its streams are told to refetch",
                mask_url(self.url),
            )
            if self.on_gap is not None:
                self.on_gap()
        else:
            logger.info("AMQP consumer on %s: consuming again, nothing lost", mask_url(self.url))

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        if self._inbox is not None:
            message = _Message(channel, method.delivery_tag, method.routing_key, body, properties)
            self._inbox.put_nowait(message)

    # -- faults: the link recovers from every one; the consumer notes a lost queue ----------------

    def _on_channel_closed(self, _channel: Any, exc: BaseException) -> None:
        # The link's own callback, called first, has already begun the reconnect.
        if getattr(exc, "reply_code", None) == 404 and self._declared:
            self._declared = False  # declare it anew on the next connection
            self._lost = True

    def _on_cancelled(self, _frame: Any) -> None:
        self._link.restart(RuntimeError("the broker cancelled the consumer (queue deleted?)"))


def _ignore(_frame: Any) -> None:
    """A bind's answer when another bind follows (pika sends a bind without one as nowait)."""
