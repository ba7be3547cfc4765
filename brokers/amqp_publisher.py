"""The publishing half of `brokers.amqp`: one I/O thread per process owns the connection.

Why a thread: pika connections are not thread-safe and Django publishes from
any thread; a connection per thread would be rebuilt per request under ASGI
(DESIGN.md, "Pitfalls"). Why ``SelectConnection`` and not ``BlockingConnection``:
a blocking channel in confirm mode waits for each publish's confirm, one round
trip per event, whereas this thread publishes everything queued as one batch
and settles each waiting caller as the broker's acks (often ``multiple``) come.

Every method below runs on the I/O thread except `PublisherIO.publish` and
`PublisherIO.stop`, which talk to it only through ``add_callback_threadsafe``
and a deque (whose appends and pops are atomic).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict, deque
from typing import Any, ClassVar

import pika
from pika.adapters.select_connection import IOLoop

from signalbus.conf import mask_url
from signalbus.errors import BrokerUnavailable, PublishError, SignalbusError

from .amqp import Backoff, connection_error, describe, headline

__all__ = ["Outgoing", "PublisherIO"]

logger = logging.getLogger("signalbus.brokers.amqp")

STOP_TIMEOUT = 2.0  # seconds for the broker to answer our Connection.Close


class Outgoing:
    """One event on its way; its caller waits on ``done`` until the I/O thread settles it."""

    __slots__ = (
        *("awaited", "body", "deadline", "done", "error"),
        *("properties", "topic", "withdrawn", "written"),
    )
    unreported_failures: ClassVar[int] = 0  # failures nobody waited for: logged and counted

    def __init__(self, topic: str, body: bytes, properties: Any, deadline: float) -> None:
        self.topic = topic
        self.body = body
        self.properties = properties
        self.deadline = deadline
        self.error: SignalbusError | None = None
        self.awaited = False  # a caller waits for it, and so reports its failure
        # Written to a connection at least once: from then on it may reach the broker.
        self.written = False
        self.withdrawn = False  # its caller gave up before it was written: never send it
        # A bare lock, held until settled: the cheapest thing a thread can wait on.
        self.done = threading.Lock()
        self.done.acquire()

    def settle(self, error: SignalbusError | None = None) -> None:
        self.error = error
        self.done.release()
        if error is not None and not self.awaited:
            # Nobody is waiting for this one any more: say it here, never drop it silently.
            event_id = headline(self.body)[0] or "?"
            logger.error("event %s on %s not published: %s", event_id, self.topic, error)
            Outgoing.unreported_failures += 1


class PublisherIO:
    """The I/O thread and its connection, as a chain of small ``on_*`` steps."""

    def __init__(self, url: str, params: Any, exchange: str) -> None:
        self.url = url
        self.params = params
        self.exchange = exchange
        self.pid = os.getpid()
        self.sent = 0
        self.batches = 0
        self.connected_once = False
        # Why events are waiting now, for the error a caller gets at its deadline.
        self.reason = ""
        self._outbox: deque[Outgoing] = deque()
        self._unconfirmed: OrderedDict[int, Outgoing] = OrderedDict()
        self._wake_pending = False
        # Guards `Outgoing.written` against `withdrawn`: a caller that gives up either
        # withdraws its event for good or learns that it was already on its way.
        self._claim = threading.Lock()
        self._ioloop = IOLoop()
        self._connection: Any = None
        self._channel: Any = None  # set once confirms are on and the exchange declared
        self._tag = 0
        self._timer: Any = None
        self._cause: BaseException | None = None
        self._stopping = False
        self._finished = False
        self._backoff = Backoff()
        self._thread = threading.Thread(
            target=self._run, name="signalbus-amqp-publisher", daemon=True
        )
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self.pid == os.getpid() and self._thread.is_alive()

    # -- the callers' side (any thread) --------------------------------------------------------

    def publish(self, topic: str, body: bytes, properties: Any, timeout: float) -> None:
        """Queue one event and wait until the broker confirmed it, or raise."""
        self.wait(self.submit(topic, body, properties, timeout), timeout)

    def submit(self, topic: str, body: bytes, properties: Any, timeout: float) -> Outgoing:
        """Queue one event without waiting: `wait` for it later (several confirms then come
        back in one round trip), or let it be; a failure nobody waits for is logged."""
        item = Outgoing(topic, body, properties, time.monotonic() + timeout)
        self._outbox.append(item)
        # Append before the check, clear before the drain (`_on_wakeup`): no event is
        # stranded, and a burst from many threads costs one wake-up of the I/O thread.
        if not self._wake_pending:
            self._wake_pending = True
            self._ioloop.add_callback_threadsafe(self._on_wakeup)
        if self._finished:  # the thread has ended (`close` raced us): nothing would send it
            raise PublishError(f"event on {topic} not published: {self.reason}")
        return item

    def wait(self, item: Outgoing, timeout: float) -> None:
        """Wait until ``item`` is confirmed, or raise why not."""
        item.awaited = True
        if not item.done.acquire(timeout=max(0.0, item.deadline - time.monotonic())):
            with self._claim:
                item.withdrawn = not item.written
            if not item.done.acquire(blocking=False):  # not settled in the meantime
                raise self._expired(item, timeout)
        if item.error is not None:
            raise item.error

    def _expired(self, item: Outgoing, timeout: float) -> SignalbusError:
        shown = mask_url(self.url)
        if not self.connected_once:
            return BrokerUnavailable(
                f"cannot reach broker {shown} (timed out); is RabbitMQ running?"
            )
        reason = self.reason or "no confirm from the broker"
        if item.withdrawn:
            return PublishError(
                f"event on {item.topic} not published to {shown} within {timeout:g} s: {reason}"
            )
        # Written but unconfirmed: no client can know whether the broker has it.
        return PublishError(
            f"event on {item.topic} not confirmed by {shown} within {timeout:g} s: {reason}; "
            "it may still be delivered"
        )

    def stop(self, flush_timeout: float) -> None:
        """Wait (bounded) until what is queued is confirmed, then close and end the thread."""
        if not self.alive:
            return
        deadline = time.monotonic() + flush_timeout
        while (self._outbox or self._unconfirmed) and time.monotonic() < deadline:
            time.sleep(0.005)
        self._ioloop.add_callback_threadsafe(self._on_stop)
        self._thread.join(STOP_TIMEOUT)

    # -- the I/O thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._ioloop.start()
        except Exception:  # a bug in a callback: callers get an error, the next publish a thread
            logger.exception("the AMQP publisher thread for %s failed", mask_url(self.url))
        finally:
            # Flag first, settle second: a `publish` that appends after the settling sees it.
            self._finished = True
            self.reason = "the publisher was closed"
            for item in [*self._unconfirmed.values(), *self._outbox]:
                item.settle(PublishError(f"event on {item.topic} not confirmed: {self.reason}"))
            self._unconfirmed.clear()
            self._outbox.clear()
            self._ioloop.close()

    def _on_wakeup(self) -> None:
        self._wake_pending = False
        if self._channel is not None:
            self._drain()
        elif self._connection is None and self._timer is None and not self._stopping:
            self._connect()

    def _connect(self) -> None:
        self._timer = None
        if self._stopping:
            return
        self._expire_waiting()
        self._connection = pika.SelectConnection(
            self.params,
            on_open_callback=self._on_connection_open,
            on_open_error_callback=self._on_connection_open_error,
            on_close_callback=self._on_connection_closed,
            custom_ioloop=self._ioloop,
        )

    def _expire_waiting(self) -> None:
        """Settle what outlived its deadline in the outbox while there was no connection."""
        now = time.monotonic()
        # One timeout for all, so deadlines rise from the head; callers append at the tail.
        while self._outbox and self._outbox[0].deadline <= now:
            item = self._outbox.popleft()
            item.settle(PublishError(f"event on {item.topic} not published: {self.reason}"))

    def _on_connection_open(self, connection: Any) -> None:
        connection.add_on_connection_blocked_callback(self._on_blocked)
        connection.add_on_connection_unblocked_callback(self._on_unblocked)
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_channel_open(self, channel: Any) -> None:
        channel.add_on_close_callback(self._on_channel_closed)
        channel.confirm_delivery(
            self._on_confirm, callback=lambda _frame: self._declare_exchange(channel)
        )

    def _declare_exchange(self, channel: Any) -> None:
        channel.exchange_declare(
            self.exchange, "topic", durable=True, callback=lambda _frame: self._on_ready(channel)
        )

    def _on_ready(self, channel: Any) -> None:
        if self.connected_once:
            logger.info("AMQP publisher reconnected to %s", mask_url(self.url))
        self._channel = channel
        self._tag = 0
        self.connected_once = True
        self.reason = ""
        self._backoff.reset()
        self._drain()

    def _drain(self) -> None:
        """Publish everything queued as one batch: pika writes it out in as few sends as it can."""
        now = time.monotonic()
        count = 0
        while self._outbox:
            item = self._outbox.popleft()
            with self._claim:
                # Past its deadline its caller has raised already: sending it is a surprise.
                gone = item.withdrawn or item.deadline <= now
                item.written = item.written or not gone
            if gone:
                item.settle(PublishError(f"event on {item.topic} expired before it was sent"))
                continue
            try:
                self._channel.basic_publish(self.exchange, item.topic, item.body, item.properties)
            except pika.exceptions.AMQPError as exc:
                self._outbox.appendleft(item)
                self._restart(exc)
                return
            self._tag += 1
            self._unconfirmed[self._tag] = item
            count += 1
        self.batches += count > 0

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        for item in self._confirmed(method.delivery_tag, method.multiple):
            if acked:
                self.sent += 1
                item.settle()
            else:
                reason = f"refused by broker {mask_url(self.url)} (basic.nack)"
                item.settle(PublishError(f"event on {item.topic} {reason}"))

    def _confirmed(self, tag: int, multiple: bool) -> list[Outgoing]:
        if not multiple:
            item = self._unconfirmed.pop(tag, None)
            return [] if item is None else [item]
        done = []
        while self._unconfirmed and next(iter(self._unconfirmed)) <= tag:
            done.append(self._unconfirmed.popitem(last=False)[1])
        return done

    def _on_blocked(self, _connection: Any, frame: Any) -> None:
        self.reason = f"the broker blocks publishers ({frame.method.reason})"

    def _on_unblocked(self, _connection: Any, _frame: Any) -> None:
        self.reason = ""

    def _on_channel_closed(self, _channel: Any, exc: BaseException) -> None:
        self._channel = None
        self._restart(exc)

    def _restart(self, cause: BaseException) -> None:
        """One recovery path, the connection's: close it and let `_on_connection_closed` act."""
        self._channel = None
        connection = self._connection
        if connection is not None and not (connection.is_closing or connection.is_closed):
            self._cause = cause
            connection.close()

    def _on_connection_open_error(self, _connection: Any, exc: BaseException) -> None:
        self._connection = None
        self._on_failure(self._cause or exc)

    def _on_connection_closed(self, _connection: Any, exc: BaseException) -> None:
        self._connection = self._channel = None
        # Unconfirmed events may or may not have reached the broker: send them again
        # (at least once; the worker's hub drops a duplicate by its id).
        self._outbox.extendleft(reversed(self._unconfirmed.values()))
        self._unconfirmed.clear()
        self._on_failure(self._cause or exc)

    def _on_failure(self, exc: BaseException) -> None:
        self._cause = None
        if self._stopping:
            self._ioloop.stop()
        elif not self.connected_once:
            # First contact: the callers learn at once; the next publish tries again.
            while self._outbox:
                self._outbox.popleft().settle(connection_error(self.url, exc))
        else:
            delay = self._backoff.next()
            self.reason = f"reconnecting after {describe(exc)}"
            logger.warning(
                "AMQP publisher: no connection to %s (%s); retrying in %.1f s",
                mask_url(self.url),
                describe(exc),
                delay,
            )
            self._timer = self._ioloop.call_later(delay, self._connect)

    def _on_stop(self) -> None:
        self._stopping = True
        if self._timer is not None:
            self._ioloop.remove_timeout(self._timer)
            self._timer = None
        connection = self._connection
        if connection is None or connection.is_closed:
            self._ioloop.stop()
        elif not connection.is_closing:
            connection.close()  # `_on_failure` stops the loop once it is closed
