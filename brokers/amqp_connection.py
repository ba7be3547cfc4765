"""One pika connection on the worker's asyncio loop, kept open for a consumer that owns it.

Why on the loop: what the consumer hands over and what it settles (acks,
publishes) are then plain calls on one thread, with no handoff and no lock.
Its owners: the worker's own queue (`brokers.amqp_consumer`) and its
subscriber queues (`brokers.amqp_subscriber`).

`LoopConnection.open` connects and waits until the owner says it is consuming;
a failure then is one line (`brokers.amqp.connection_error`): broker down, login
refused, a queue or exchange declared otherwise. After that every fault (the
connection lost, a channel closed by the broker, a consumer cancelled) goes
through one path: close the connection, wait (doubling to a cap, reset after a
success), connect again and give the owner a new channel. An owner that needs
more adds its own callbacks to each channel (pika calls every one registered),
says what consuming again means for it (``on_resumed``) and has a last word on
the open channel when closing for good (``on_closing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from pika.adapters.asyncio_connection import AsyncioConnection

from signalbus.conf import mask_url
from signalbus.errors import BrokerUnavailable, SignalbusError

from .amqp import Backoff, connection_error, describe

__all__ = ["CLOSE_TIMEOUT", "START_TIMEOUT", "LoopConnection"]

logger = logging.getLogger("signalbus.brokers.amqp")

START_TIMEOUT = 30.0  # beyond pika's own connect (10 s) and handshake (15 s) timeouts
CLOSE_TIMEOUT = 2.0


class LoopConnection:
    """A connection that reopens itself; ``on_channel`` sets up each new channel."""

    def __init__(
        self,
        url: str,
        params: Any,
        on_channel: Callable[[Any], None],
        *,
        what: str,
        on_resumed: Callable[[], None] | None = None,
        on_closing: Callable[[Any], None] | None = None,
    ) -> None:
        self.url = url
        self.params = params
        self.what = what  # who is connecting, for the log: "AMQP subscribers"
        self.channel: Any = None
        self._on_channel = on_channel
        self._on_resumed = on_resumed  # consuming again after a fault; by default a log line
        self._on_closing = on_closing  # given the channel, still open, by `close`
        self._ready = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connection: Any = None
        self._closing = False
        self._opened: asyncio.Future[None] | None = None  # the first setup's outcome
        self._closed: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._cause: BaseException | None = None
        # A shorter cap than the publishers': while a worker has no queue of its own bound
        # (`brokers.amqp_consumer`), events published (or retried by publishers that came
        # back first) are not queued for it.
        self._backoff = Backoff(cap=2.0)

    @property
    def ready(self) -> bool:
        return self._ready

    async def open(self) -> None:
        """Connect and wait for the owner's first `set_ready`; a one-line error if it fails."""
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._opened = self._loop.create_future()
        self._connect()
        try:
            await asyncio.wait_for(self._opened, START_TIMEOUT)
        except TimeoutError:
            await self.close()
            raise BrokerUnavailable(
                f"cannot reach broker {mask_url(self.url)} (timed out); is RabbitMQ running?"
            ) from None
        except SignalbusError:
            await self.close()
            raise

    def set_ready(self) -> None:
        """Called by the owner once the channel consumes."""
        self._ready = True
        self._backoff.reset()
        if self._opened is not None and not self._opened.done():
            self._opened.set_result(None)
        elif self._on_resumed is not None:
            self._on_resumed()
        else:
            logger.info("%s: consuming again from %s", self.what, mask_url(self.url))

    def restart(self, cause: BaseException) -> None:
        """The one recovery path: close the connection; `_on_connection_closed` goes on."""
        self._ready = False
        self.channel = None
        connection = self._connection
        if connection is not None and not (connection.is_closing or connection.is_closed):
            self._cause = cause
            connection.close()

    async def close(self) -> None:
        """Close for good; safe to call more than once."""
        self._closing = True
        self._ready = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        connection = self._connection
        if self._on_closing is not None and self.channel is not None and self.channel.is_open:
            self._on_closing(self.channel)
        if connection is not None and not connection.is_closed:
            self._closed = asyncio.get_running_loop().create_future()
            if not connection.is_closing:
                connection.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed, CLOSE_TIMEOUT)
        self._connection = self.channel = None

    # -- the flow ---------------------------------------------------------------------------

    def _connect(self) -> None:
        self._timer = None
        if self._closing:
            return
        self._connection = AsyncioConnection(
            self.params,
            on_open_callback=self._on_connection_open,
            on_open_error_callback=self._on_connection_open_error,
            on_close_callback=self._on_connection_closed,
            custom_ioloop=self._loop,
        )

    def _on_connection_open(self, connection: Any) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_channel_open(self, channel: Any) -> None:
        self.channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        self._on_channel(channel)

    def _on_channel_closed(self, _channel: Any, exc: BaseException) -> None:
        self.restart(exc)

    def _on_connection_open_error(self, _connection: Any, exc: BaseException) -> None:
        self._connection = None
        self._on_failure(self._cause or exc)

    def _on_connection_closed(self, _connection: Any, exc: BaseException) -> None:
        self._connection = self.channel = None
        self._ready = False
        self._on_failure(self._cause or exc)

    def _on_failure(self, exc: BaseException) -> None:
        self._cause = None
        if self._closing:
            if self._closed is not None and not self._closed.done():
                self._closed.set_result(None)
        elif self._opened is not None and not self._opened.done():
            self._opened.set_exception(connection_error(self.url, exc))
        else:
            assert self._loop is not None
            delay = self._backoff.next()
            logger.warning(
                "%s: no connection to %s (%s); retrying in %.1f s",
                self.what,
                mask_url(self.url),
                describe(exc),
                delay,
            )
            self._timer = self._loop.call_later(delay, self._connect)
