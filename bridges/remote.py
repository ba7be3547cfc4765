"""Bus -> ``@signalbus.subscriber`` functions, run in the worker (DESIGN.md, "Delivery guarantees").

Each function runs in a pool of ``SUBSCRIBER_THREADS`` threads, so it may block
and use the Django ORM: ``close_old_connections`` runs around each call, as
Django runs it around a request. The outcome comes back to the event loop,
which settles the delivery:

- the function returned: acked;
- it raised: logged with the event's id and topic and the subscriber's name,
  tried again after 1 s, 2 s, 4 s... (`retry_delay`) up to the subscriber's
  ``retries``, then dead-lettered with the reason (exception class and message).

Where deliveries come from depends on the transport (`brokers.base.Broker.durable_consumer`):

- AMQP: a durable queue per subscriber, shared by every worker, so each event is
  handled by one worker, at least once; retries wait in RabbitMQ (surviving a
  worker crash) and dead letters are kept in ``signalbus.dead-letters``.
- 0MQ and ``memory://``: nothing outlives the worker, so subscribers run from the
  worker's own stream, at most once: an event published while no worker runs, or
  a retry pending when it stops, is lost, and a dead letter is only a log line.
  The worker says so at start. Running them beats refusing: the embedded default
  can then run subscribers in development, and one worker is all 0MQ allows.

At least once means a function may see an event twice (a worker stopped mid-call):
``event.id`` tells a repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.db import close_old_connections, connections

from brokers.base import Broker, Consumer, Deliver, Delivery, DurableConsumer
from signalbus.conf import Settings
from signalbus.errors import InvalidEvent
from signalbus.events import Event
from signalbus.subscribers import Subscriber
from signalbus.topics import compile_pattern

__all__ = [
    "LocalDelivery",
    "SubscriberRunner",
    "SubscribersConsumer",
    "call_subscriber",
    "describe_error",
    "retry_delay",
    "subscribers_consumer",
]

logger = logging.getLogger("signalbus.subscribers")

RETRY_FIRST = 1.0  # seconds before the first retry; doubled for each one after
RETRY_CAP = 60.0
# Seconds a stopping worker lets the calls under way finish: within the contract's
# "exits within a few seconds", with room to settle and close.
SHUTDOWN_GRACE = 3.0


def retry_delay(attempt: int) -> float:
    """The wait after failed attempt number ``attempt`` (1-based): 1 s, 2 s, 4 s... to a cap."""
    return float(min(RETRY_FIRST * 2 ** (attempt - 1), RETRY_CAP))


def describe_error(exc: BaseException) -> str:
    """The dead letter's reason: ``ValueError: message``, with the module if not built in."""
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ != "builtins":
        name = f"{kind.__module__}.{name}"
    return f"{name}: {exc}" if str(exc) else name


def call_subscriber(func: Callable[[Event], Any], event: Event) -> BaseException | None:
    """One call, with Django's housekeeping around it as around a request: a connection that
    broke or outlived ``CONN_MAX_AGE`` is not handed to the next call in this thread."""
    close_old_connections()
    try:
        func(event)
    except BaseException as exc:  # even SystemExit: it would end the thread, strand the delivery
        return exc
    finally:
        close_old_connections()
    return None


class _Pool:
    """Daemon threads on one queue. Not a ThreadPoolExecutor: it joins its threads at exit,
    so one function stuck past the shutdown grace would keep the worker from exiting."""

    def __init__(self, size: int) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"signalbus-subscriber-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def stop(self) -> None:
        """Each thread ends once the jobs queued before this are done."""
        for _ in self._threads:
            self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:  # a bug of ours, not the function's: keep the thread
                logger.exception("a subscriber pool job failed")
        connections.close_all()  # this thread's own database connections


@dataclass
class RunnerStats:
    handled: int = 0
    retried: int = 0
    dead_lettered: int = 0


class SubscriberRunner:
    """Runs each delivery's function in the pool and settles the delivery on the loop."""

    def __init__(
        self, subscribers: Sequence[Subscriber], *, threads: int, max_bytes: int = 1 << 20
    ) -> None:
        self.subscribers = {s.name: s for s in subscribers}
        self.threads = threads
        self.max_bytes = max_bytes
        self.stats = RunnerStats()
        self.in_flight = 0  # handed to the pool, not yet settled; read and written on the loop
        self._matchers = [(compile_pattern(s.pattern), s.name) for s in subscribers]
        self._accepting = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: _Pool | None = None
        self._idle: asyncio.Event | None = None
        self._timers: set[asyncio.TimerHandle] = set()

    def start(self) -> None:
        """Start the threads; on the loop that will settle the deliveries."""
        self._loop = asyncio.get_running_loop()
        self._pool = _Pool(self.threads)
        self._accepting = True

    def handle(self, delivery: Delivery) -> None:
        """Hand ``delivery`` to the pool (the `brokers.base.Handle` of a durable consumer)."""
        if not self._accepting or self._pool is None:
            return  # stopping: unsettled, the broker gives it to a worker later
        subscriber = self.subscribers[delivery.subscription]
        try:
            event = self._decode(delivery.body)
        except InvalidEvent as exc:  # no retry makes it an event
            self.stats.dead_lettered += 1
            logger.error(
                "message on %s for subscriber %s is not an event: %s; dead-lettered",
                delivery.topic,
                subscriber.name,
                exc,
            )
            delivery.dead_letter(f"InvalidEvent: {exc}")
            return
        self.in_flight += 1
        self._pool.submit(partial(self._call, subscriber, event, delivery))

    def offer(self, topic: str, body: bytes) -> None:
        """An event of the worker's own stream (0MQ, memory): to each subscriber it matches."""
        for match, name in self._matchers:
            if match(topic):
                self.handle(LocalDelivery(self, name, topic, body))

    def later(self, delay: float, delivery: Delivery) -> None:
        """Handle ``delivery`` again after ``delay`` seconds: a retry kept in this process."""
        if self._loop is None or not self._accepting:
            return

        def fire() -> None:
            self._timers.discard(timer)
            self.handle(delivery)

        timer = self._loop.call_later(delay, fire)
        self._timers.add(timer)

    async def drain(self, grace: float) -> None:
        """Take nothing more; give the calls under way up to ``grace`` seconds and settle them."""
        self._accepting = False
        if self._timers:
            logger.warning("%d pending retries dropped (at most once)", len(self._timers))
            for timer in self._timers:
                timer.cancel()
            self._timers.clear()
        if self.in_flight:
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), grace)
            except TimeoutError:
                logger.warning(
                    "%d subscriber call(s) unfinished after %g s; stopping without them"
                    " (on AMQP their events go back to the queue)",
                    self.in_flight,
                    grace,
                )
        if self._pool is not None:
            self._pool.stop()
            self._pool = None

    # -- in a pool thread -------------------------------------------------------------------

    def _call(self, subscriber: Subscriber, event: Event, delivery: Delivery) -> None:
        if not self._accepting:
            self._post(self._done)  # not run: left unsettled
            return
        error = call_subscriber(subscriber.func, event)
        self._post(self._settle, subscriber, event, delivery, error)

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        # RuntimeError: the loop is closed, the worker stopped while this call ran.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    # -- on the loop -------------------------------------------------------------------------

    def _done(self) -> None:
        self.in_flight -= 1
        if not self.in_flight and self._idle is not None:
            self._idle.set()

    def _settle(
        self, subscriber: Subscriber, event: Event, delivery: Delivery, error: BaseException | None
    ) -> None:
        self._done()
        if error is None:
            self.stats.handled += 1
            delivery.ack()
            return
        reason = describe_error(error)
        attempts = f"attempt {delivery.attempt} of {subscriber.retries + 1}"
        where = (subscriber.name, event.id, event.topic, attempts, reason)
        if delivery.attempt <= subscriber.retries:
            delay = retry_delay(delivery.attempt)
            self.stats.retried += 1
            logger.warning(
                "subscriber %s failed on event %s (%s), %s: %s; retrying in %g s",
                *where,
                delay,
                exc_info=error,
            )
            delivery.retry(delay, reason)
        else:
            self.stats.dead_lettered += 1
            logger.error(
                "subscriber %s failed on event %s (%s), %s: %s; dead-lettered",
                *where,
                exc_info=error,
            )
            delivery.dead_letter(reason)

    def _decode(self, body: bytes) -> Event:
        if len(body) > self.max_bytes:
            raise InvalidEvent(
                f"message of {len(body)} bytes is over MAX_MESSAGE_BYTES ({self.max_bytes})"
            )
        return Event.decode(body)


class LocalDelivery(Delivery):
    """An event of the worker's own stream: at most once. Nothing to ack; a retry is a timer
    in this process, lost if it stops; a dead letter is a log line."""

    def __init__(
        self, runner: SubscriberRunner, subscription: str, topic: str, body: bytes, attempt: int = 1
    ) -> None:
        super().__init__(subscription, topic, body, attempt)
        self.runner = runner

    def ack(self) -> None:
        """Nothing to tell: the stream keeps nothing."""

    def retry(self, delay: float, error: str) -> None:
        again = LocalDelivery(
            self.runner, self.subscription, self.topic, self.body, self.attempt + 1
        )
        self.runner.later(delay, again)

    def dead_letter(self, error: str) -> None:
        logger.error(
            "event on %s for subscriber %s not kept (%s): this transport has no dead-letter queue",
            self.topic,
            self.subscription,
            error,
        )


class SubscribersConsumer(Consumer):
    """The hub's stream (when the worker serves HTTP) and the subscribers' deliveries,
    started, run and closed as one `Consumer`: the worker serves the same way either way."""

    def __init__(
        self,
        runner: SubscriberRunner,
        *,
        stream: Consumer | None,
        durable: DurableConsumer | None,
        hub_patterns: Sequence[str],
        transport: str = "",
        grace: float = SHUTDOWN_GRACE,
    ) -> None:
        self.runner = runner
        self.stream = stream
        self.durable = durable
        self.transport = transport
        self.grace = grace
        self._hub = [compile_pattern(p) for p in hub_patterns]
        self._everything = "#" in hub_patterns

    @property
    def ready(self) -> bool:
        return all(part.ready for part in self._parts())

    async def start(self) -> None:
        self.runner.start()
        if self.durable is None:
            logger.warning(
                "%s:// keeps no queue for subscribers: they run in this worker from its own"
                " stream, at most once (an event published while no worker runs, or a retry"
                " pending when it stops, is lost); use amqp:// for at least once",
                self.transport,
            )
        if self.stream is not None:
            self.stream.on_gap = self.on_gap
            self.stream.yield_every = self.yield_every
            await self.stream.start()
        if self.durable is not None:
            try:
                await self.durable.start()
            except BaseException:
                await self.runner.drain(0)  # ends the pool's threads
                if self.stream is not None:
                    await self.stream.aclose()
                raise
        names = ", ".join(self.runner.subscribers)
        logger.info("subscribers running in %d threads: %s", self.runner.threads, names)

    async def run(self, deliver: Deliver) -> None:
        tasks: list[asyncio.Task[None]] = []
        if self.stream is not None:
            tasks.append(asyncio.create_task(self.stream.run(self._fan_out(deliver))))
        if self.durable is not None:
            tasks.append(asyncio.create_task(self.durable.run(self.runner.handle)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a failure of either is the worker's
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        await self.runner.drain(self.grace)
        for part in self._parts():
            await part.aclose()

    def _parts(self) -> list[Consumer | DurableConsumer]:
        return [part for part in (self.stream, self.durable) if part is not None]

    def _fan_out(self, deliver: Deliver) -> Deliver:
        """The hub gets what its patterns match; local subscribers what theirs match."""
        local = self.durable is None

        def fan_out(topic: str, body: bytes) -> None:
            if self._everything or any(match(topic) for match in self._hub):
                deliver(topic, body)
            if local:
                self.runner.offer(topic, body)

        return fan_out


def subscribers_consumer(
    broker: Broker,
    subscribers: Sequence[Subscriber],
    *,
    hub_patterns: Sequence[str],
    settings: Settings,
) -> SubscribersConsumer:
    """The worker's consumer when it has subscribers; ``hub_patterns`` empty with ``--no-http``."""
    threads = settings.subscriber_threads
    runner = SubscriberRunner(subscribers, threads=threads, max_bytes=settings.max_message_bytes)
    durable = broker.durable_consumer({s.name: s.pattern for s in subscribers}, prefetch=threads)
    if durable is not None:
        stream = broker.consumer(hub_patterns) if hub_patterns else None
    else:
        patterns = dict.fromkeys([*hub_patterns, *(s.pattern for s in subscribers)])
        stream = broker.consumer(list(patterns))
    return SubscribersConsumer(
        runner, stream=stream, durable=durable, hub_patterns=hub_patterns, transport=broker.scheme
    )
