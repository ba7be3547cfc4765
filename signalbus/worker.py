"""The fan-out worker: broker -> hub -> SSE streams, served by uvicorn.

The worker owns its signal handling: uvicorn re-raises SIGTERM after its own
shutdown, which would end the process with -15 instead of the 0 the contract
asks for (DESIGN.md, "Pitfalls"). On Ctrl-C or SIGTERM it closes every
stream, stops accepting, and exits 0 within a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any

from .conf import Settings, mask_url
from .errors import ConfigurationError, InvalidEvent
from .events import Event
from .hub import Hub

__all__ = ["Worker"]

logger = logging.getLogger("signalbus.worker")

SHUTDOWN_GRACE = 3


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
    ) -> None:
        self.broker_url = broker_url
        self.settings = settings
        self.host = host
        self.port = port
        self.patterns = tuple(patterns)
        self.hub = Hub(replay_size=settings.replay_buffer, queue_size=settings.client_queue)
        self.bad_messages = 0

    def run(self) -> int:
        """Serve until Ctrl-C or SIGTERM; the exit status for the command line."""
        from brokers.registry import open_broker

        consumer = open_broker(self.broker_url).consumer(self.patterns)
        sock = bind_socket(self.host, self.port)
        try:
            return asyncio.run(self._serve(consumer, sock))
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
        self.hub.publish(event.id, event.topic, body)

    async def _serve(self, consumer: Any, sock: socket.socket) -> int:
        import uvicorn

        from bridges.sse import create_app

        consumer.on_gap = self.hub.reset_all
        await consumer.start()
        app = create_app(
            self.hub,
            self.settings,
            ready=lambda: consumer.ready,
            counters={"signalbus_bad_messages": lambda: self.bad_messages},
        )
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=SHUTDOWN_GRACE,
            server_header=False,
        )
        server = _Server(config, on_stop=self.hub.close_all)
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
