"""``amqp://`` and ``amqps://``: RabbitMQ through pika, at least once.

URL: ``amqp://USER:PASS@HOST:PORT/VHOST`` (pika's query options such as
``?heartbeat=30`` pass through), plus one of ours: ``?exchange=NAME``. The
exchange is, first found: the ``exchange`` keyword, the URL's ``exchange``,
``SIGNALBUS["EXCHANGE"]`` (read only when Django is configured), ``signalbus``.

Publishing: each event goes to a durable topic exchange with the event's topic
as routing key, the JSON as body, ``content_type`` ``application/json``,
``message_id`` and ``type`` from the event, a ``timestamp`` and persistent
delivery. pika connections are not thread-safe, so one I/O thread per process
owns the connection (`brokers.amqp_publisher`); `AMQPBroker.publish` hands it
the event and waits for the broker's confirm, so a caller learns of a failure:

- broker unreachable at first use: `BrokerUnavailable` at once (auth or vhost
  refused: `ConfigurationError`);
- connection lost later: the I/O thread reconnects (delay doubling to a cap,
  reset after success) and publishes again until ``SIGNALBUS["PUBLISH_TIMEOUT"]``
  (10 s), then `PublishError` naming the topic and the reason. An event whose
  confirm was lost with the connection is sent again: at least once, and the
  worker's hub drops the duplicate by id.

Consuming (the worker): a queue of the worker's own, bound with each pattern
(AMQP topic patterns are ours, DESIGN.md "Topics"), durable and expiring a while
after its consumer is gone, so that a connection cut or a broker restart loses
nothing; a prefetch of 1,000; an ack once ``deliver`` returned. A lost connection
makes `AMQPConsumer.ready` false until it consumes again. A message that is not an
event goes to the ``signalbus.dlx`` exchange with the reason (`brokers.amqp_consumer`).

Subscribers (the worker's ``@signalbus.subscriber`` functions): a durable quorum queue
per subscriber, shared by every worker, with retries and dead letters kept in
RabbitMQ (`brokers.amqp_subscriber`).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import random
import re
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pika
from pika.adapters.utils.connection_workflow import (
    AMQPConnectionWorkflowFailed,
    AMQPConnectorPhaseErrorBase,
    AMQPConnectorStackTimeout,
)

from signalbus.conf import configured_settings, mask_url
from signalbus.errors import BrokerUnavailable, ConfigurationError, SignalbusError

from .base import Broker

if TYPE_CHECKING:
    from .amqp_consumer import AMQPConsumer
    from .amqp_publisher import Outgoing, PublisherIO
    from .amqp_subscriber import AMQPSubscriptions

__all__ = ["AMQPBroker", "Backoff", "connection_error", "describe", "parse_amqp_url"]

logger = logging.getLogger("signalbus.brokers.amqp")

DEFAULT_EXCHANGE = "signalbus"
DEFAULT_PUBLISH_TIMEOUT = 10.0
SUBMIT_WINDOW = 1_000  # unconfirmed events per thread before `AMQPBroker.submit` waits
# AMQP 0-9-1 exchange names; "amq." is reserved for the broker's own.
_EXCHANGE_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,255}")


def parse_amqp_url(url: str) -> tuple[Any, str | None]:
    """pika's connection parameters and our ``exchange`` option; `ConfigurationError` if bad."""
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        if parts.scheme.lower() not in ("amqp", "amqps"):
            raise ValueError("the form is amqp://USER:PASS@HOST:PORT/VHOST")
        exchange = next((value for key, value in query if key == "exchange"), None)
        rest = urlencode([(key, value) for key, value in query if key != "exchange"])
        params = pika.URLParameters(urlunsplit(parts._replace(query=rest)))
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"bad AMQP URL {mask_url(url)!r}: {_masked(url, exc)}") from None
    return params, exchange


def _masked(url: str, exc: Exception) -> str:
    """The error's text without the URL's password, should the parser have quoted it
    (urllib and pika quote the part they reject: ``... as 'xyz'``)."""
    userinfo = url.partition("://")[2].partition("/")[0].rpartition("@")[0]
    password = userinfo.partition(":")[2]
    return str(exc).replace(f"'{password}'", "'**'") if password else str(exc)


def check_exchange(name: str) -> str:
    if not _EXCHANGE_NAME.fullmatch(name) or name.startswith("amq."):
        raise ConfigurationError(
            f"bad AMQP exchange name {name!r}: 1 to 255 of A-Z a-z 0-9 _ - . :, not amq.*"
        )
    return name


# -- errors: pika's exceptions mapped once, here ----------------------------------------------


def _root_cause(exc: BaseException) -> BaseException:
    """The exception that says what happened, out of pika's connection-workflow wrappers."""
    while True:
        if isinstance(exc, AMQPConnectionWorkflowFailed) and exc.exceptions:
            exc = exc.exceptions[-1]
        elif isinstance(exc, AMQPConnectorPhaseErrorBase):
            exc = exc.exception
        elif (
            isinstance(exc, pika.exceptions.AMQPConnectionError)
            and exc.args
            and isinstance(exc.args[0], BaseException)
        ):
            exc = exc.args[0]  # e.g. IncompatibleProtocolError(StreamLostError(...))
        else:
            return exc


def describe(exc: BaseException) -> str:
    """A short lower-case reason for a log line or an error message."""
    exc = _root_cause(exc)
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | AMQPConnectorStackTimeout):
        return "timed out"
    if isinstance(exc, pika.exceptions.AMQPHeartbeatTimeout):
        return "no heartbeat from the broker"
    if isinstance(exc, pika.exceptions.ConnectionClosed | pika.exceptions.ChannelClosed):
        return f"closed by the broker: {exc.reply_code} {exc.reply_text}"
    if isinstance(exc, pika.exceptions.StreamLostError) or "Stream connection lost" in str(exc):
        # pika keeps only text ("Stream connection lost: ConnectionResetError(104, '...')"),
        # and calls a stream lost during the handshake an IncompatibleProtocolError.
        cause = re.search(r"Error\(\d+, '([^']+)'\)", str(exc))
        return _lower(cause.group(1)) if cause else "connection closed by the peer"
    if isinstance(exc, OSError) and exc.strerror:
        return _lower(exc.strerror)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _lower(text: str) -> str:
    return text[:1].lower() + text[1:]


def connection_error(url: str, exc: BaseException) -> SignalbusError:
    """The one-line error for a broker that cannot be used at first contact."""
    root = _root_cause(exc)
    shown = mask_url(url)
    quoted = re.search(r"\((\d+)\) '([^']*)'", str(root))
    detail = quoted.group(2).split(" - ")[0] if quoted else describe(root)
    if isinstance(root, pika.exceptions.ProbableAuthenticationError):
        return ConfigurationError(
            f"broker {shown} refused the login ({detail}); check the user and password"
        )
    if isinstance(root, pika.exceptions.ProbableAccessDeniedError):
        text = quoted.group(2) if quoted else detail
        return ConfigurationError(f"broker {shown} refused the virtual host ({text}); check it")
    if isinstance(root, pika.exceptions.ChannelClosedByBroker):  # e.g. the exchange differs
        return ConfigurationError(f"broker {shown} refused: {root.reply_code} {root.reply_text}")
    return BrokerUnavailable(
        f"cannot reach broker {shown} ({describe(root)}); is RabbitMQ running?"
    )


def quiet_pika() -> None:
    """Leave fault reports to this adapter: one line each, where pika logs a dozen.

    Only when the project has not set the ``pika`` logger's level itself (``LOGGING``),
    so that a project that wants pika's own log still gets it.
    """
    pika_logger = logging.getLogger("pika")
    if pika_logger.level == logging.NOTSET:
        pika_logger.setLevel(logging.CRITICAL)


def connection_params(url: str, role: str) -> Any:
    """pika's parameters for one new connection, named so that RabbitMQ's UI says whose it is."""
    quiet_pika()
    params = parse_amqp_url(url)[0]
    if params.client_properties is None:
        name = f"signalbus {role} {socket.gethostname()} pid {os.getpid()}"
        params.client_properties = {"connection_name": name}
    return params


class Backoff:
    """Reconnect delays: doubling from ``first`` up to ``cap``, ``first`` again after a success."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first = first
        self.cap = cap
        self._delay = first

    def next(self) -> float:
        delay, self._delay = self._delay, min(self._delay * 2, self.cap)
        # Jitter spreads the reconnects of many processes after a broker restart.
        return delay * random.uniform(0.5, 1.0)  # noqa: S311 - not cryptography

    def reset(self) -> None:
        self._delay = self.first


# -- the message headline: id and type, without decoding the whole body ------------------------

_HEAD = b'{"specversion":"1.0","id":"'
_TYPE = b'","type":"'


def headline(body: bytes) -> tuple[str | None, str | None]:
    """The event's ``id`` and ``type`` for the message properties.

    Our encoder writes ``specversion``, ``id``, ``source``, ``type`` first, with no
    spaces, and a JSON string cannot hold a bare ``","``: two byte searches find
    both. Any other body is parsed.
    """
    if body.startswith(_HEAD):
        end = body.find(b'"', len(_HEAD))
        at = body.find(_TYPE, end)
        stop = body.find(b'"', at + len(_TYPE)) if at > 0 else -1
        if end > 0 and stop > 0 and b"\\" not in body[len(_HEAD) : end] + body[at:stop]:
            return body[len(_HEAD) : end].decode(), body[at + len(_TYPE) : stop].decode()
    try:
        obj = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(obj, dict):
        return None, None
    event_id, event_type = obj.get("id"), obj.get("type")
    return (
        event_id if isinstance(event_id, str) else None,
        event_type if isinstance(event_type, str) else None,
    )


def properties(body: bytes) -> Any:
    """The AMQP properties of one event: what a consumer that is not signalbus reads."""
    event_id, event_type = headline(body)
    return pika.BasicProperties(
        content_type="application/json",
        message_id=event_id,
        type=event_type,
        timestamp=int(time.time()),
        delivery_mode=pika.DeliveryMode.Persistent.value,
    )


# -- the adapter -----------------------------------------------------------------------------


class AMQPBroker(Broker):
    """One publishing connection per process, owned by an I/O thread; consumers for the worker."""

    scheme = "amqp"

    def __init__(
        self, url: str, *, exchange: str | None = None, publish_timeout: float | None = None
    ) -> None:
        super().__init__(url)
        url_exchange = parse_amqp_url(url)[1]
        chosen = exchange or url_exchange
        self._exchange_option = check_exchange(chosen) if chosen is not None else None
        self._timeout_option = publish_timeout
        self._lock = threading.Lock()
        self._io: PublisherIO | None = None
        self._windows = threading.local()  # per thread: what `submit` has not seen confirmed
        self._at_exit = False
        # A forked child must not touch the parent's connection: forget it, and the lock
        # another thread may have held at the fork.
        os.register_at_fork(after_in_child=_forget_after_fork(self))

    @cached_property
    def exchange(self) -> str:
        """The exchange's name, resolved at first use (never at import)."""
        if self._exchange_option is not None:
            return self._exchange_option
        configured = configured_settings()
        return check_exchange(configured.exchange) if configured is not None else DEFAULT_EXCHANGE

    @cached_property
    def publish_timeout(self) -> float:
        """How long `publish` retries through an outage before `PublishError`."""
        if self._timeout_option is not None:
            return self._timeout_option
        configured = configured_settings()
        return configured.publish_timeout if configured is not None else DEFAULT_PUBLISH_TIMEOUT

    @property
    def sent(self) -> int:
        """Events confirmed by the broker since the I/O thread started."""
        io = self._io
        return io.sent if io is not None else 0

    @property
    def batches(self) -> int:
        """Times the I/O thread published what was queued: ``sent / batches`` is the batch size."""
        io = self._io
        return io.batches if io is not None else 0

    def publish(self, topic: str, body: bytes) -> None:
        self._running().publish(topic, body, properties(body), self.publish_timeout)

    def submit(self, topic: str, body: bytes) -> None:
        """Queue without waiting for the confirm: the events of one commit go out in a few
        batches and their confirms come back together. At most ``SUBMIT_WINDOW`` per thread
        are unconfirmed; past that, a submit waits for the oldest (back-pressure)."""
        io = self._running()
        window = self._window()
        window.append(io.submit(topic, body, properties(body), self.publish_timeout))
        while len(window) > SUBMIT_WINDOW:
            oldest = window.popleft()
            # Waited for as back-pressure only: its failure, if any, is logged as its own.
            if oldest.done.acquire(timeout=max(0.0, oldest.deadline - time.monotonic())):
                oldest.done.release()

    def _window(self) -> deque[Outgoing]:
        window: deque[Outgoing] | None = getattr(self._windows, "items", None)
        if window is None:
            window = self._windows.items = deque()
        return window

    def _running(self) -> PublisherIO:
        with self._lock:
            if self._io is None or not self._io.alive:
                from .amqp_publisher import PublisherIO

                params = connection_params(self.url, "publisher")
                self._io = PublisherIO(self.url, params, self.exchange)
                if not self._at_exit:
                    # A short-lived process (a management command) delivers before it exits.
                    atexit.register(self.close)
                    self._at_exit = True
            return self._io

    def close(self) -> None:
        with self._lock:
            io, self._io = self._io, None
        if io is not None:
            io.stop(flush_timeout=self.publish_timeout)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._io = None

    def consumer(self, patterns: Sequence[str]) -> AMQPConsumer:
        from .amqp_consumer import AMQPConsumer

        params = connection_params(self.url, "worker")
        return AMQPConsumer(self.url, params, self.exchange, patterns)

    def durable_consumer(
        self, subscriptions: Mapping[str, str], *, prefetch: int
    ) -> AMQPSubscriptions:
        """A quorum queue per subscriber, shared by every worker (`brokers.amqp_subscriber`)."""
        from .amqp_subscriber import AMQPSubscriptions

        params = connection_params(self.url, "subscribers")
        return AMQPSubscriptions(self.url, params, self.exchange, subscriptions, prefetch=prefetch)


def _forget_after_fork(broker: AMQPBroker) -> Any:
    ref = weakref.ref(broker)

    def forget() -> None:
        alive = ref()
        if alive is not None:
            alive._after_fork()

    return forget
