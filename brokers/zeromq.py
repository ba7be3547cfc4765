"""``zmq://HOST:PORT``: brokerless 0MQ PUB/SUB, the embedded default.

URL: ``zmq://127.0.0.1:5560``. The worker binds a SUB socket there; every
Django process connects to it, so a worker restart needs no restart of the
Django processes (0MQ reconnects on its own). Messages are two frames: the
topic and the event's JSON. With ``signalbus worker --workers N`` the supervisor
binds that address instead (`brokers.zeromq_forwarder`) and each worker process
connects its SUB socket to the forwarder (``ZeroMQBroker(url, forwarder=...)``).

Guarantee: at most once. PUB/SUB drops a message when no subscriber is
connected, so this adapter makes each drop loud instead of silent:

- the publishing socket is an XPUB, which sees subscriptions arrive, so the
  first send waits (``SIGNALBUS["ZMQ_CONNECT_TIMEOUT"]``, default 1 s) until
  the worker has subscribed: a short-lived process (a management command that
  saves one object and exits) still delivers its event;
- an event sent while this process knows of no subscribed worker (none has
  subscribed yet, or every one unsubscribed) is logged with its topic and
  counted in ``ZeroMQBroker.dropped``. While one is, the subscriptions are read
  at most once a millisecond (``SUBSCRIPTIONS_READ_EVERY``): reading them costs
  more than the send, and a burst needs one read, not one per event;
- a worker that stops does not unsubscribe: this side of the connection
  outlives it, so events sent meanwhile wait in its queue for the next worker
  bound at the address (a restart loses nothing). The socket's monitor tells
  when the connection drops: that is logged, the events sent while it is down
  are counted in ``ZeroMQBroker.waiting``, and if it is still down when the
  socket closes, their loss is logged as an error;
- a send past the high-water mark raises `PublishError` instead of vanishing
  (``XPUB_NODROP``);
- at exit the socket is closed with a linger, so queued events leave first.

0MQ sockets are not thread-safe: one socket per process, used under a lock,
and rebuilt in a forked child (a pre-forking server).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

from signalbus.conf import configured_settings, mask_url
from signalbus.errors import BrokerUnavailable, ConfigurationError, PublishError
from signalbus.topics import compile_pattern, validate_pattern

from .base import Broker, Consumer, Deliver, deliver_or_log

if TYPE_CHECKING:
    import zmq

__all__ = ["ZeroMQBroker", "ZeroMQConsumer", "bind_error", "parse_zmq_url"]

logger = logging.getLogger("signalbus.brokers.zeromq")

LINGER_MS = 2_000
# libzmq's ABI values (zmq.h), as plain ints: pyzmq's enum members cost more per
# operation than the send they qualify.
_EVENTS, _POLLIN, _NOBLOCK, _SNDMORE, _RCVMORE = 15, 1, 1, 2, 13
_CONNECTED, _DISCONNECTED = 0x0001, 0x0200  # ZMQ_EVENT_*
_NOBLOCK_SNDMORE = _NOBLOCK | _SNDMORE

# Forks of this process so far, counted in each child: a socket made before the fork
# is the parent's, and its child opens its own (a pre-forking server).
_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_count_fork)
SEND_HWM = 100_000
SUBSCRIPTIONS_READ_EVERY = 0.001  # seconds, while some worker is subscribed


def parse_zmq_url(url: str) -> str:
    """The 0MQ endpoint (``tcp://HOST:PORT``) of a ``zmq://`` URL, or `ConfigurationError`."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"bad 0MQ URL {mask_url(url)!r}: {exc}") from None
    if parts.scheme != "zmq" or not parts.hostname or port is None:
        raise ConfigurationError(f"bad 0MQ URL {mask_url(url)!r}: the form is zmq://HOST:PORT")
    if parts.path not in ("", "/") or parts.query:
        raise ConfigurationError(f"bad 0MQ URL {mask_url(url)!r}: no path or query is allowed")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"tcp://{host}:{port}"


def bind_error(url: str, exc: zmq.ZMQError) -> BrokerUnavailable:
    """The one-line error for an address this process could not bind."""
    import zmq

    reason = "address in use (is another worker running?)" if exc.errno == zmq.EADDRINUSE else exc
    return BrokerUnavailable(f"cannot bind {url}: {reason}")


class ZeroMQBroker(Broker):
    """One XPUB socket per process, connected to the worker's SUB endpoint.

    ``forwarder``: the XPUB endpoint of a `brokers.zeromq_forwarder.ZeroMQForwarder`;
    consumers then connect to it instead of binding the URL's address."""

    scheme = "zmq"

    def __init__(
        self, url: str, *, connect_timeout: float | None = None, forwarder: str | None = None
    ) -> None:
        super().__init__(url)
        self.endpoint = parse_zmq_url(url)
        self.forwarder = forwarder
        if connect_timeout is None:
            configured = configured_settings()
            connect_timeout = configured.zmq_connect_timeout if configured else 1.0
        self.connect_timeout = connect_timeout
        self.sent = 0
        self.waiting = 0  # events sent since the connection to the worker dropped
        self._away = False  # the monitor's last word: the connection is down
        self._lock = threading.Lock()
        self._fork = -1  # the `_forks` count its socket was made at
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._socket: zmq.Socket[bytes] | None = None
        self._monitor: zmq.Socket[bytes] | None = None
        self._subscriptions: set[bytes] = set()
        self._waited = False
        self._next_read = 0.0  # time.monotonic() of the next subscriptions read

    def publish(self, topic: str, body: bytes) -> None:
        import zmq

        with self._lock:
            sock = self._connected()
            now = time.monotonic()
            if now >= self._next_read or not self._subscriptions:
                self._next_read = now + SUBSCRIPTIONS_READ_EVERY
                self._read_subscriptions(sock, timeout_ms=0)
                self._read_link()
            if not self._subscriptions and not self._waited:
                # Connect before first send: wait once for the worker's subscription.
                self._waited = True
                self._read_subscriptions(sock, timeout_ms=int(self.connect_timeout * 1000))
            if not self._subscriptions:
                self.dropped += 1
                logger.warning(
                    "0MQ event on %s dropped: no worker is subscribed at %s (at-most-once)",
                    topic,
                    self.url,
                )
                return
            try:
                # Two sends with int flags: send_multipart's flag enums cost more than a send.
                sock.send(topic.encode("ascii"), _NOBLOCK_SNDMORE)
                sock.send(body, _NOBLOCK)
            except zmq.Again:
                raise PublishError(
                    f"0MQ send queue to {self.url} is full ({SEND_HWM} events): "
                    f"the worker is not keeping up; event on {topic} not sent"
                ) from None
            except zmq.ZMQError as exc:
                raise PublishError(f"0MQ send to {self.url} failed: {exc}") from exc
            self.sent += 1
            if self._away:
                self.waiting += 1

    def _connected(self) -> zmq.Socket[bytes]:
        if self._socket is not None and self._fork == _forks:
            return self._socket
        import zmq

        # A fresh context in a forked child: the parent's sockets belong to the parent.
        self._fork = _forks
        self._subscriptions.clear()
        self._waited = False
        self._away, self.waiting = False, 0
        self._context = zmq.Context()
        sock = self._context.socket(zmq.XPUB)
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        sock.setsockopt(zmq.XPUB_NODROP, 1)
        try:
            sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise BrokerUnavailable(f"cannot connect to {self.url}: {exc}") from exc
        self._socket = sock
        self._monitor = sock.get_monitor_socket(_CONNECTED | _DISCONNECTED)
        atexit.register(self.close)
        return sock

    def _read_link(self) -> None:
        """Follow the connection to the worker from the socket's monitor: a worker that stops
        does not unsubscribe, so this is where its absence shows."""
        from zmq.utils.monitor import recv_monitor_message

        monitor = self._monitor
        if monitor is None:
            return
        while cast(int, monitor.getsockopt(_EVENTS)) & _POLLIN:
            event = recv_monitor_message(monitor, _NOBLOCK)["event"]
            if event == _DISCONNECTED and not self._away:
                self._away = True
                logger.warning(
                    "0MQ worker at %s went away: events wait in this process for the next"
                    " worker there, and are lost if this process exits first",
                    self.url,
                )
            elif event == _CONNECTED and self._away:
                self._away = False
                logger.info("0MQ worker at %s is back: %d event(s) go out", self.url, self.waiting)
                self.waiting = 0

    def _read_subscriptions(self, sock: zmq.Socket[bytes], timeout_ms: int) -> None:
        """Track which prefixes some worker subscribed to (XPUB reports them as messages).
        With no timeout, one ``EVENTS`` read: a poller per publish cost more than the send."""

        if timeout_ms and not sock.poll(timeout_ms):
            return
        while cast(int, sock.getsockopt(_EVENTS)) & _POLLIN:
            message = sock.recv(_NOBLOCK)
            if message[:1] == b"\x01":
                self._subscriptions.add(message[1:])
            elif message[:1] == b"\x00":
                self._subscriptions.discard(message[1:])

    def close(self) -> None:
        with self._lock:
            ours = self._fork == _forks  # a forked child leaves its parent's socket alone
            if ours:
                self._read_link()
            sock, context, monitor = self._socket, self._context, self._monitor
            self._socket = self._context = self._monitor = None
            if sock is None or context is None or not ours:
                return
            if self._away and self.waiting:
                logger.error(
                    "%d 0MQ event(s) sent while the worker at %s was away are lost unless one"
                    " comes back within %.0f s: this process is closing its socket",
                    self.waiting,
                    self.url,
                    LINGER_MS / 1000,
                )
            if monitor is not None:
                sock.disable_monitor()
                monitor.close(linger=0)
            sock.close(linger=LINGER_MS)
            context.term()

    def consumer(self, patterns: Sequence[str]) -> Consumer:
        if self.forwarder is not None:
            return ZeroMQConsumer(self.url, self.forwarder, patterns, connect=True)
        return ZeroMQConsumer(self.url, self.endpoint, patterns)


def _prefix(pattern: str) -> bytes:
    """The literal words before the first wildcard: a 0MQ prefix subscription can filter on it."""
    words = []
    for word in validate_pattern(pattern).split("."):
        if word in ("*", "#"):
            break
        words.append(word)
    return ".".join(words).encode("ascii")


class ZeroMQConsumer(Consumer):
    """The worker's SUB socket, bound at the URL's address, or connected to a forwarder."""

    def __init__(
        self, url: str, endpoint: str, patterns: Sequence[str], *, connect: bool = False
    ) -> None:
        self.url = url
        self.endpoint = endpoint
        self.connect = connect
        self.prefixes = sorted({_prefix(p) for p in patterns})
        if b"" in self.prefixes:
            self.prefixes = [b""]
        # A prefix subscription is coarse (``shop.order`` lets ``shop.orderly.1`` and
        # ``shop.order.1.updated`` through): the patterns themselves decide.
        self._matchers = [compile_pattern(p) for p in patterns]
        self.malformed = 0
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._socket: zmq.Socket[bytes] | None = None

    @property
    def ready(self) -> bool:
        return self._socket is not None

    async def start(self) -> None:
        import zmq

        self._context = zmq.Context()
        sock = self._context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, SEND_HWM)
        for prefix in self.prefixes:
            sock.setsockopt(zmq.SUBSCRIBE, prefix)
        try:
            if self.connect:
                sock.connect(self.endpoint)
            else:
                sock.bind(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close()
            self._context.term()
            self._context = None
            if self.connect:
                raise BrokerUnavailable(f"cannot connect to {self.endpoint}: {exc}") from None
            raise bind_error(self.url, exc) from None
        self._socket = sock

    async def run(self, deliver: Deliver) -> None:
        """Reads the socket from the loop's own poller: a plain socket and one callback per
        wake-up, where ``zmq.asyncio`` spent a future and several enum operations on each
        message (a quarter of the worker's time at 100 streams and 100 events/s)."""
        import zmq

        if self._socket is None:
            await self.start()
        sock = self._socket
        assert sock is not None
        loop = asyncio.get_running_loop()
        failed: asyncio.Future[None] = loop.create_future()
        getsockopt, recv = sock.getsockopt, sock.recv

        def receive() -> list[bytes]:  # recv_multipart, with int flags
            frames = [recv(_NOBLOCK)]
            while getsockopt(_RCVMORE):
                frames.append(recv(_NOBLOCK))
            return frames

        def drain() -> None:
            # The descriptor only signals a change: read until 0MQ says nothing is left.
            # Every ``yield_every`` messages, the rest waits one turn of the loop so that
            # the streams write what is queued for them, in one send each.
            if failed.done():
                return  # run() has ended (cancelled with it): the socket may be closed
            try:
                for _ in range(self.yield_every):
                    if not cast(int, getsockopt(_EVENTS)) & _POLLIN:
                        return
                    self._take(receive(), deliver)
                loop.call_soon(drain)
            except Exception as exc:  # the socket itself failed: the worker stops
                if not failed.done():
                    failed.set_exception(exc)

        fd = cast(int, sock.getsockopt(zmq.FD))
        loop.add_reader(fd, drain)
        loop.call_soon(drain)  # what arrived before the reader was added
        try:
            await failed
        finally:
            loop.remove_reader(fd)

    def _take(self, frames: list[bytes], deliver: Deliver) -> None:
        if len(frames) != 2:
            self.malformed += 1
            logger.warning("0MQ message with %d frames ignored (expected topic, body)", len(frames))
            return
        try:
            topic = frames[0].decode("ascii")
        except UnicodeDecodeError:
            self.malformed += 1
            logger.warning("0MQ message with a non-ASCII topic ignored: %r", frames[0][:80])
            return
        if any(match(topic) for match in self._matchers) and not deliver_or_log(
            deliver, topic, frames[1]
        ):
            self.malformed += 1

    async def aclose(self) -> None:
        sock, context = self._socket, self._context
        self._socket = self._context = None
        if sock is not None:
            sock.close(linger=0)
        if context is not None:
            context.term()
