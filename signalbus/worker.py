"""The fan-out worker: broker -> hub -> SSE streams, served by uvicorn; and broker ->
``@signalbus.subscriber`` functions (`bridges.remote`), alone with ``--no-http``.

The worker owns its signal handling: uvicorn re-raises SIGTERM after its own
shutdown, which would end the process with -15 instead of the 0 the contract
asks for (DESIGN.md, "Pitfalls"). On Ctrl-C or SIGTERM it closes every
stream, stops accepting, and exits 0 within a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import signal
import socket
import time
from collections.abc import Coroutine, Iterator, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from .conf import Settings, mask_url
from .errors import ConfigurationError, InvalidEvent
from .events import Event
from .hub import Hub

if TYPE_CHECKING:
    from brokers.base import Broker, Consumer

__all__ = ["Worker"]

logger = logging.getLogger("signalbus.worker")

SHUTDOWN_GRACE = 3
GC_YOUNG = 100_000  # generation-0 threshold of a serving worker (CPython's default: 700)


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound before uvicorn starts, so "port in use" is one clear line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigurationError(f"port {port} on {host} is in use; pass --port") from None
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Worker:
    """One worker process: options in, `Worker.run` out."""

    def __init__(
        self,
        *,
        broker_url: str,
        settings: Settings,
        host: str = "127.0.0.1",
        port: int = 8001,
        patterns: Sequence[str] = ("#",),
        http: bool = True,
        sock: socket.socket | None = None,
        broker: Broker | None = None,
    ) -> None:
        self.broker_url = broker_url
        self.http = http  # False: ``--no-http``, the @subscriber functions only
        # From `signalbus.supervisor` (``--workers N``): its listening socket, and with
        # 0MQ a broker whose consumer connects to its forwarder.
        self.sock = sock
        self.broker = broker
        self.settings = settings
        self.host = host
        self.port = port
        self.patterns = tuple(patterns)
        self.hub = Hub(replay_size=settings.replay_buffer, queue_size=settings.client_queue)
        self.bad_messages = 0
        self.lag = 0.0  # seconds from the newest event's creation to its arrival here

    def run(self) -> int:
        """Serve until Ctrl-C or SIGTERM; the exit status for the command line."""
        from brokers.registry import open_broker

        consumer = self._consumer(self.broker or open_broker(self.broker_url))
        consumer.yield_every = max(1, min(64, self.settings.client_queue // 4))
        if not self.http:
            return _run(self._run_subscribers(consumer))
        sock = self.sock or bind_socket(self.host, self.port)
        try:
            return _run(self._serve(consumer, sock))
        finally:
            sock.close()

    def deliver(self, topic: str, body: bytes) -> None:
        """Called by the consumer for each message: check it, then hand it to the hub.
        `InvalidEvent` goes back to the consumer, which keeps the message aside if it can."""
        try:
            if len(body) > self.settings.max_message_bytes:
                raise InvalidEvent(
                    f"message of {len(body)} bytes is over MAX_MESSAGE_BYTES"
                    f" ({self.settings.max_message_bytes})"
                )
            event = Event.decode(body)
        except InvalidEvent:
            self.bad_messages += 1
            raise
        if b"\n" in body or b"\r" in body:
            body = event.encode()  # an SSE data: field is one line
        self.lag = _age(event.id)
        self.hub.publish(event.id, event.topic, body)

    def _consumer(self, broker: Broker) -> Consumer:
        """The hub's stream, with the deliveries of the ``@signalbus.subscriber`` functions
        when any are registered (`bridges.remote`), as one consumer."""
        from .subscribers import discover

        subscribers = discover(self.settings.subscribers)
        if subscribers:
            from bridges.remote import subscribers_consumer

            hub_patterns = self.patterns if self.http else ()
            return subscribers_consumer(
                broker, subscribers, hub_patterns=hub_patterns, settings=self.settings
            )
        if not self.http:
            raise ConfigurationError(
                "--no-http runs @signalbus.subscriber functions and none is registered; put them"
                " in an installed app's subscribers.py or list them in SIGNALBUS['SUBSCRIBERS']"
            )
        return broker.consumer(self.patterns)

    async def _run_subscribers(self, consumer: Consumer) -> int:
        """``--no-http``: run the subscribers until Ctrl-C or SIGTERM, with no port bound;
        calls under way get `bridges.remote.SHUTDOWN_GRACE` to finish, then exit 0."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await consumer.start()
        consuming = asyncio.create_task(consumer.run(self.deliver), name="signalbus-consumer")
        stopping = asyncio.create_task(stop.wait())
        logger.info(
            "signalbus worker: subscribers only (no HTTP), broker %s", mask_url(self.broker_url)
        )
        done, _ = await asyncio.wait({consuming, stopping}, return_when=asyncio.FIRST_COMPLETED)
        failed = consuming in done
        if failed:
            reason = consuming.exception() or "it returned"
            logger.error("the broker consumer stopped: %s; the worker stops too", reason)
        for task in (stopping, consuming):
            task.cancel()
        await asyncio.gather(stopping, consuming, return_exceptions=True)
        await consumer.aclose()
        return 1 if failed else 0

    async def _serve(self, consumer: Any, sock: socket.socket) -> int:
        import uvicorn

        from bridges.access_log import TokenMask
        from bridges.http_limits import head_limited_protocol
        from bridges.sse import StreamStats, create_app

        consumer.on_gap = self.hub.reset_all
        await consumer.start()
        stats = StreamStats()
        app = create_app(
            self.hub,
            self.settings,
            ready=lambda: consumer.ready,
            counters={"signalbus_bad_messages": lambda: self.bad_messages},
            # A worker that falls behind shows it here before its clients do (DESIGN.md,
            # "Pitfalls": a backlog in the broker grows silently otherwise).
            gauges={"signalbus_delivery_lag_seconds": lambda: self.lag},
            stats=stats,
        )
        settings = self.settings
        # Logging is the command line's: uvicorn adds no handlers, its access lines
        # (INFO) go through TokenMask, and its start-up chatter stays below WARNING.
        logging.getLogger("uvicorn.access").addFilter(TokenMask())
        uvicorn_error = logging.getLogger("uvicorn.error")
        uvicorn_error.setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))
        config = uvicorn.Config(
            app,
            http=head_limited_protocol(
                settings.max_header_bytes, settings.header_timeout, stats.rejected
            ),
            log_config=None,
            lifespan="off",
            timeout_graceful_shutdown=SHUTDOWN_GRACE,
            server_header=False,
        )
        server = _Server(config, on_stop=self.hub.close_all)
        _tune_gc()
        consuming = asyncio.create_task(consumer.run(self.deliver), name="signalbus-consumer")
        consuming.add_done_callback(lambda task: _on_consumer_end(task, server))
        logger.info(
            "signalbus worker on http://%s:%d/events, broker %s",
            self.host,
            self.port,
            mask_url(self.broker_url),
        )
        try:
            await server.serve(sockets=[sock])
        finally:
            consuming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consuming
            await consumer.aclose()
        return 1 if server.failed else 0


def _age(event_id: str) -> float:
    """Seconds since a signalbus id was made (its first 16 hex digits are nanoseconds);
    0 for ids of other origins, which carry no time."""
    try:
        return (
            max(0.0, (time.time_ns() - int(event_id[:16], 16)) / 1e9)
            if len(event_id) == 32
            else 0.0
        )
    except ValueError:
        return 0.0


def _tune_gc() -> None:
    """Keep the cyclic garbage collector off the fan-out path (DESIGN.md, "Pitfalls": a third
    of an SSE server's CPU at 5,000 clients). What start-up made (Django, the libraries,
    the app) is frozen out of every later collection, and the young generation collects
    after GC_YOUNG net new objects instead of 700: a burst that streams take from their
    queues (a slow client, a paused transport) wakes a future and a task per stream, which
    at 700 forced collections that promoted them all and so brought on full ones over every
    stream's objects."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, middle, old)


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where installed (uvicorn's ``standard`` extra), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _on_consumer_end(task: asyncio.Task[None], server: _Server) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    logger.error("the broker consumer stopped: %s; the worker stops too", exc or "it returned")
    server.failed = True
    server.stop()


class _Server:
    """uvicorn's server with signal handling of our own (no re-raise, exit 0)."""

    def __init__(self, config: Any, on_stop: Any) -> None:
        import uvicorn

        outer = self

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                previous = {
                    sig: signal.signal(sig, outer.on_signal)
                    for sig in (signal.SIGINT, signal.SIGTERM)
                }
                try:
                    yield
                finally:
                    for sig, handler in previous.items():
                        signal.signal(sig, handler)

        self.server = Server(config)
        self.on_stop = on_stop
        self.failed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket]) -> None:
        self._loop = asyncio.get_running_loop()
        await self.server.serve(sockets=sockets)

    def on_signal(self, sig: int, frame: FrameType | None) -> None:
        if self.server.should_exit and sig == signal.SIGINT:
            self.server.force_exit = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.stop)

    def stop(self) -> None:
        """Close every stream so that uvicorn's graceful shutdown has nothing to wait for."""
        self.on_stop()
        self.server.should_exit = True
