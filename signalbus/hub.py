"""The in-process fan-out: one incoming event to every subscription whose pattern matches.

Runs on the worker's event loop and is not thread-safe: the broker consumer
hands events over with ``loop.call_soon_threadsafe`` when it lives elsewhere.
Each event's SSE frame is encoded once and the same bytes are queued for
every subscriber. A bounded replay buffer, in arrival order, serves
``Last-Event-ID``; because subscribing and replaying happen in one step on
the loop, a resumed stream has no gap and no duplicate.

Frames are handed on once per burst, not once per event: a subscription that
gets its first frame since it was last flushed is noted, and one ``call_soon``
flushes every noted subscription when the burst's callbacks are done. The
flush gives a subscription's frames, joined, to its direct writer when it has
one and its reader is idle (the HTTP layer writes them to the socket there and
then); otherwise it wakes the reader, which takes them with ``next_batch``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .events import Event, new_event_id
from .topics import compile_pattern

__all__ = ["Hub", "HubStats", "Subscription", "sse_frame"]

_ROUTE_CACHE_LIMIT = 10_000


def sse_frame(event_id: str, body: bytes) -> bytes:
    """One SSE message: ``id:``, ``data:`` (the event's one-line JSON), blank line."""
    return b"id: " + event_id.encode("ascii") + b"\ndata: " + body + b"\n\n"


DirectWriter = Callable[[bytes], bool]
"""Writes frames at once and returns True, or returns False to leave them to ``next_batch``."""


class Subscription:
    """One stream's queue of frames, bounded: past ``limit`` it is closed, not slowed."""

    __slots__ = (
        "_on_queued",
        "_pending",
        "_waiter",
        "closed",
        "limit",
        "patterns",
        "reason",
        "writer",
    )

    def __init__(
        self,
        patterns: tuple[str, ...],
        limit: int,
        on_queued: Callable[[Subscription], None] | None = None,
    ) -> None:
        """``on_queued``: called with the subscription when a frame is queued on an empty
        queue, to have it flushed later; without it, each frame wakes the reader at once."""
        self.patterns = patterns
        self.limit = limit
        self.closed = False
        self.reason = ""
        self.writer: DirectWriter | None = None
        self._on_queued = on_queued
        self._pending: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None

    def push(self, frame: bytes) -> bool:
        """Queue one frame; False when that closed the subscription for overflow."""
        if self.closed:
            return True
        pending = self._pending
        if len(pending) >= self.limit:
            self.close("overflow")
            return False
        pending.append(frame)
        if self._on_queued is None:
            self._wake()
        elif len(pending) == 1:
            self._on_queued(self)
        return True

    def flush(self) -> None:
        """Hand the queued frames on: to the direct writer when the reader is idle and the
        writer takes them, else to the reader. A frame written directly is never behind
        one the reader holds: the reader waits in ``next_batch`` with nothing in hand."""
        pending = self._pending
        if not pending or self.closed:
            return
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # the reader is busy (or already woken): it takes them next
        writer = self.writer
        if writer is None:
            waiter.set_result(None)
            return
        try:
            written = writer(pending[0] if len(pending) == 1 else b"".join(pending))
        except Exception as exc:  # the reader's next_batch raises it: its stream ends
            self.writer = None
            waiter.set_exception(exc)
            return
        if written:
            self._pending = []
        else:
            waiter.set_result(None)

    def close(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.reason = reason
            self._pending = []
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next_batch(self) -> list[bytes] | None:
        """Every frame queued since the last call, or None once closed."""
        while not self._pending and not self.closed:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self.closed:
            return None
        batch, self._pending = self._pending, []
        return batch


@dataclass
class HubStats:
    """Counters read by ``/metrics``."""

    events_received: int = 0
    frames_queued: int = 0
    overflow_disconnects: int = 0
    replays: int = 0
    resets: int = 0
    duplicates: int = 0


@dataclass(frozen=True, slots=True)
class _Held:
    seq: int
    event_id: str
    topic: str
    frame: bytes


class Hub:
    """Fan-out from the broker to the streams, with the replay buffer for ``Last-Event-ID``."""

    def __init__(self, *, replay_size: int = 10_000, queue_size: int = 1_000) -> None:
        self.queue_size = queue_size
        self.stats = HubStats()
        self._held: deque[_Held] = deque(maxlen=replay_size)
        self._seq = itertools.count(1)
        # The hub's own starting point, so that a stream reset while nothing is
        # held can still resume from "everything since" on its next reconnect.
        self._origin = new_event_id()
        self._index: dict[str, int] = {self._origin: 0}
        self._by_pattern: dict[str, set[Subscription]] = {}
        self._routes: dict[str, tuple[str, ...]] = {}
        self._queued: list[Subscription] = []

    @property
    def subscriptions(self) -> int:
        return len({s for subs in self._by_pattern.values() for s in subs})

    def publish(self, event_id: str, topic: str, body: bytes) -> None:
        """Hold one event for replay and queue its frame on every matching subscription.

        An id already held is a redelivery (at-least-once brokers): dropped here,
        so that no stream sees it twice."""
        if event_id in self._index:
            self.stats.duplicates += 1
            return
        frame = sse_frame(event_id, body)
        self._hold(event_id, topic, frame)
        self.stats.events_received += 1
        patterns = self._route(topic)
        if not patterns:
            return
        if len(patterns) == 1:
            targets: Iterable[Subscription] = self._by_pattern[patterns[0]]
        else:
            targets = {s for p in patterns for s in self._by_pattern[p]}
        overflowed = []
        count = 0
        for sub in targets:
            count += 1
            if not sub.push(frame):
                overflowed.append(sub)
        self.stats.frames_queued += count - len(overflowed)
        for sub in overflowed:
            self.stats.overflow_disconnects += 1
            self.unsubscribe(sub)

    def subscribe(
        self, patterns: tuple[str, ...], last_event_id: str | None = None
    ) -> tuple[Subscription, list[bytes]]:
        """A live subscription and the frames to send before it (replay, or a reset event)."""
        sub = Subscription(patterns, self.queue_size, self._on_queued)
        for pattern in patterns:
            if pattern not in self._by_pattern:
                self._by_pattern[pattern] = set()
                self._routes.clear()
            self._by_pattern[pattern].add(sub)
        if last_event_id is None:
            return sub, []
        return sub, self._replay(patterns, last_event_id)

    def unsubscribe(self, sub: Subscription) -> None:
        sub.close(sub.reason or "unsubscribed")
        for pattern in sub.patterns:
            subs = self._by_pattern.get(pattern)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_pattern[pattern]
                    self._routes.clear()

    def reset_all(self) -> None:
        """Events were lost upstream: forget what is held (a resume across the gap would
        skip them) and tell every open stream to refetch with a ``signalbus.reset``."""
        self._held.clear()
        self._origin = new_event_id()
        self._index = {self._origin: 0}
        frame = self._reset_frame()
        for sub in {s for subs in self._by_pattern.values() for s in subs}:
            sub.push(frame)
        self.stats.resets += 1

    def close_all(self, reason: str = "shutdown") -> None:
        for sub in {s for subs in self._by_pattern.values() for s in subs}:
            sub.close(reason)
        self._by_pattern.clear()
        self._routes.clear()

    def _on_queued(self, sub: Subscription) -> None:
        queued = self._queued
        queued.append(sub)
        if len(queued) == 1:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                queued.clear()  # no loop, so no reader waiting: ``next_batch`` finds them
                return
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Once per burst: every subscription that got frames since the last flush.
        A subscription is listed again if its reader emptied it mid-burst: harmless."""
        queued, self._queued = self._queued, []
        for sub in queued:
            sub.flush()

    def _hold(self, event_id: str, topic: str, frame: bytes) -> None:
        held = self._held
        if held.maxlen is not None and len(held) == held.maxlen:
            oldest = held[0]
            self._index.pop(oldest.event_id, None)
            self._index.pop(self._origin, None)
        seq = next(self._seq)
        held.append(_Held(seq, event_id, topic, frame))
        self._index[event_id] = seq

    def _route(self, topic: str) -> tuple[str, ...]:
        """The patterns that match ``topic``, cached until the set of patterns changes."""
        patterns = self._routes.get(topic)
        if patterns is None:
            patterns = tuple(p for p in self._by_pattern if compile_pattern(p)(topic))
            if len(self._routes) >= _ROUTE_CACHE_LIMIT:
                self._routes.clear()
            self._routes[topic] = patterns
        return patterns

    def _replay(self, patterns: tuple[str, ...], last_event_id: str) -> list[bytes]:
        seq = self._index.get(last_event_id)
        if seq is None:
            self.stats.resets += 1
            return [self._reset_frame()]
        self.stats.replays += 1
        held = self._held
        start = seq - held[0].seq + 1 if held else 0
        matchers = [compile_pattern(p) for p in patterns]
        return [
            h.frame
            for h in itertools.islice(held, max(start, 0), None)
            if any(m(h.topic) for m in matchers)
        ]

    def _reset_frame(self) -> bytes:
        """The ``signalbus.reset`` event: its id is the newest held, to resume from there."""
        newest = self._held[-1].event_id if self._held else self._origin
        event = Event.create(
            "signalbus.reset",
            {"reason": "Last-Event-ID unknown or older than this worker's replay buffer"},
        )
        return sse_frame(newest, dataclasses.replace(event, id=newest).encode())
