"""The in-process fan-out: one incoming event to every subscription whose pattern matches.

Runs on the worker's event loop and is not thread-safe: the broker consumer
hands events over with ``loop.call_soon_threadsafe`` when it lives elsewhere.
Each event's SSE frame is encoded once and the same bytes are queued for
every subscriber. A bounded replay buffer, in arrival order, serves
``Last-Event-ID``; because subscribing and replaying happen in one step on
the loop, a resumed stream has no gap and no duplicate.

Frames are handed on once per burst, not once per event: ``publish`` notes the frame
and the subscriptions it is for, and one ``call_soon`` fans the burst's events out
when the burst's callbacks are done. A subscription whose reader is idle, with a
direct writer (the HTTP layer writes to the socket there and then), gets the burst
in one write; when every event of the burst goes to the same subscriptions, the
frames are joined once and the same bytes go to each. Otherwise the frames are
queued, and the reader (woken) takes them with ``next_batch``.

A fan-out to many subscriptions is written ``FAN_OUT_CHUNK`` of them per turn of the
loop, and so are the flushes of queued subscriptions, so that the loop goes on reading
the broker and serving requests meanwhile (one event to 10,000 streams is ~0.1 s of
writes). An event for the same subscriptions that
arrives during such a pass joins it: the subscriptions not yet written get it in the same
write, and those already written get it in a pass of their own after this one. Any other
burst waits for the passes to end, so every subscription gets its frames in order.
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
FAN_OUT_CHUNK = 256  # subscriptions written per turn of the loop: ~1.5 ms of writes


def sse_frame(event_id: str, body: bytes) -> bytes:
    """One SSE message: ``id:``, ``data:`` (the event's one-line JSON), blank line."""
    return b"id: " + event_id.encode("ascii") + b"\ndata: " + body + b"\n\n"


DirectWriter = Callable[[bytes], bool]
"""Writes frames at once and returns True, or returns False to leave them to ``next_batch``."""


class Subscription:
    """One stream's queue of frames, bounded: past ``limit`` it is closed, not slowed.

    ``direct`` is the stream's writer while its reader waits in ``next_batch`` with
    nothing queued, else None: a frame written through it can overtake nothing.
    """

    __slots__ = (
        "_on_queued",
        "_pending",
        "_waiter",
        "closed",
        "direct",
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
        self.direct: DirectWriter | None = None
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
        self.direct = None
        if self._on_queued is None:
            self._wake()
        elif len(pending) == 1:
            self._on_queued(self)
        return True

    def write(self, data: bytes, frames: Iterable[bytes]) -> bool:
        """``data`` (the ``frames``, joined) written at once when the reader is idle and the
        writer takes it, else each frame queued; False when that closed it for overflow."""
        direct = self.direct
        if direct is not None:
            try:
                if direct(data):
                    return True
            except Exception as exc:
                self._fail(exc)
                return True
        return all(self.push(frame) for frame in frames)

    def flush(self) -> None:
        """Hand the queued frames on: to the writer when the reader is idle and the writer
        takes them, else to the reader. A frame written directly is never behind one the
        reader holds: the reader waits in ``next_batch`` with nothing in hand."""
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
        except Exception as exc:
            self._fail(exc)
            return
        if written:
            pending.clear()
            self.direct = writer  # the reader still waits, now with nothing queued
        else:
            waiter.set_result(None)

    def close(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.reason = reason
            self._pending = []
            self._wake()

    def _wake(self) -> None:
        self.direct = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: Exception) -> None:
        """The writer raised: the reader's ``next_batch`` raises it, and its stream ends."""
        self.writer = self.direct = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    async def next_batch(self) -> list[bytes] | None:
        """Every frame queued since the last call, or None once closed."""
        while not self._pending and not self.closed:
            self._waiter = waiter = asyncio.get_running_loop().create_future()
            self.direct = self.writer
            try:
                await waiter
            finally:
                self._waiter = self.direct = None
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


class _Pass:
    """Frames being written to ``targets[pos:end]``, ``FAN_OUT_CHUNK`` at a time. Only the
    first pass of a burst (``head``) takes events that arrive while it is under way."""

    __slots__ = ("data", "end", "frames", "head", "pos", "targets")

    def __init__(
        self, frames: list[bytes], targets: tuple[Subscription, ...], end: int, head: bool
    ) -> None:
        self.frames = frames
        self.data: bytes | None = None  # the frames joined, made when first written
        self.targets = targets
        self.pos = 0
        self.end = end
        self.head = head


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
        self._targets: dict[tuple[str, ...], tuple[Subscription, ...]] = {}
        self._burst: list[tuple[bytes, tuple[Subscription, ...]]] = []
        self._passes: deque[_Pass] = deque()  # the pass under way first
        self._queued: list[Subscription] = []
        self._flush_due = False

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
        self._burst.append((frame, self._targets_of(patterns)))
        if len(self._burst) == 1:
            self._schedule()

    def subscribe(
        self, patterns: tuple[str, ...], last_event_id: str | None = None
    ) -> tuple[Subscription, list[bytes]]:
        """A live subscription and the frames to send before it (replay, or a reset event)."""
        sub = Subscription(patterns, self.queue_size, self._on_queued)
        self._targets.clear()
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
        self._targets.clear()
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
        self._fan_out()  # the events before the gap go first
        self._held.clear()
        self._origin = new_event_id()
        self._index = {self._origin: 0}
        frame = self._reset_frame()
        for sub in {s for subs in self._by_pattern.values() for s in subs}:
            sub.push(frame)
        self.stats.resets += 1

    def close_all(self, reason: str = "shutdown") -> None:
        self._passes.clear()
        for sub in {s for subs in self._by_pattern.values() for s in subs}:
            sub.close(reason)
        self._by_pattern.clear()
        self._routes.clear()
        self._targets.clear()

    def _on_queued(self, sub: Subscription) -> None:
        self._queued.append(sub)
        self._schedule()

    def _schedule(self) -> None:
        if self._flush_due:
            return
        self._flush_due = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # No loop, so no reader waiting: queue now, and ``next_batch`` finds the frames.
            try:
                self._fan_out()
            finally:
                self._queued.clear()
                self._flush_due = False
            return
        loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Once per burst, or per chunk of a long pass: the events, then every subscription
        that got frames queued since the last flush. A subscription is listed again if its
        reader emptied it mid-burst: harmless."""
        try:
            more = self._fan_out(FAN_OUT_CHUNK)
            queued = self._queued
            if len(queued) > FAN_OUT_CHUNK:  # the rest next turn: their frames wait queued
                queued, self._queued = queued[:FAN_OUT_CHUNK], queued[FAN_OUT_CHUNK:]
                more = True
            else:
                self._queued = []
            for sub in queued:
                sub.flush()
        finally:
            self._flush_due = False
        if more:
            self._schedule()  # the rest after what the loop has waiting

    def _fan_out(self, budget: int | None = None) -> bool:
        """Write up to ``budget`` subscriptions' worth (all with None); True if some is left.

        A burst whose events all go to the same subscriptions becomes a pass, written in one
        write to each; else its frames are queued one by one (and joined by the flush)."""
        passes = self._passes
        while True:
            if self._burst:
                if not passes:
                    self._begin()
                elif passes[0].head:
                    self._join(passes[0])
            if not passes:
                return False
            current = passes[0]
            size = current.end - current.pos
            if budget is not None and budget < size:
                size = budget
            self._write(current, size)
            if current.pos == current.end:
                passes.popleft()
            if budget is not None:
                budget -= size
                if budget <= 0:
                    return bool(passes or self._burst)

    def _begin(self) -> None:
        burst, self._burst = self._burst, []
        targets = burst[0][1]
        if all(t is targets for _, t in burst):
            frames = [frame for frame, _ in burst]
            self._passes.append(_Pass(frames, targets, len(targets), head=True))
        else:
            for frame, targets in burst:
                overflowed = [sub for sub in targets if not sub.push(frame)]
                self._count(1, len(targets), overflowed)

    def _join(self, head: _Pass) -> None:
        """Events for the head pass's subscriptions join it: those not yet written get them
        with the pass's frames, those already written in a pass of their own, after it."""
        burst = self._burst
        if not all(t is head.targets for _, t in burst):
            return  # they wait for the passes to end
        self._burst = []
        frames = [frame for frame, _ in burst]
        if head.pos:
            self._passes.append(_Pass(frames, head.targets, head.pos, head=False))
        head.frames = head.frames + frames
        head.data = None

    def _write(self, current: _Pass, size: int) -> None:
        frames, data = current.frames, current.data
        if data is None:
            data = current.data = frames[0] if len(frames) == 1 else b"".join(frames)
        start = current.pos
        current.pos = start + size
        chunk = current.targets[start : current.pos]
        self._count(len(frames), size, [sub for sub in chunk if not sub.write(data, frames)])

    def _count(self, frames: int, written: int, overflowed: list[Subscription]) -> None:
        """``frames`` each to ``written`` subscriptions, of which ``overflowed`` were closed."""
        self.stats.frames_queued += frames * (written - len(overflowed))
        for sub in overflowed:
            self.stats.overflow_disconnects += 1
            self.unsubscribe(sub)

    def _hold(self, event_id: str, topic: str, frame: bytes) -> None:
        held = self._held
        if held.maxlen is not None and len(held) == held.maxlen:
            oldest = held[0]
            self._index.pop(oldest.event_id, None)
            self._index.pop(self._origin, None)
        seq = next(self._seq)
        held.append(_Held(seq, event_id, topic, frame))
        self._index[event_id] = seq

    def _targets_of(self, patterns: tuple[str, ...]) -> tuple[Subscription, ...]:
        """The subscriptions of ``patterns``, one tuple shared by every event until they
        change. An event keeps the tuple it was published with: a stream that subscribes
        before the flush has the event in its replay, and does not get it twice."""
        targets = self._targets.get(patterns)
        if targets is None:
            by_pattern = self._by_pattern
            if len(patterns) == 1:
                targets = tuple(by_pattern[patterns[0]])
            else:
                targets = tuple({s for p in patterns for s in by_pattern[p]})
            if len(self._targets) >= _ROUTE_CACHE_LIMIT:
                self._targets.clear()
            self._targets[patterns] = targets
        return targets

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
