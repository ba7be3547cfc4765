"""``memory://``: an in-process transport for unit tests and single-process use.

URL: ``memory://`` or ``memory://NAME`` (separate buses per name).
Delivery is immediate to every consumer of the same bus in this process, on
that consumer's event loop; nothing crosses a process boundary and nothing is
kept for consumers that start later.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import ClassVar

from signalbus.topics import compile_pattern, validate_pattern

from .base import Broker, Consumer, Deliver, deliver_or_log

__all__ = ["MemoryBroker"]


class _Bus:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.consumers: set[MemoryConsumer] = set()


class MemoryBroker(Broker):
    """All `MemoryBroker` objects with the same URL share one bus."""

    scheme = "memory"
    _buses: ClassVar[dict[str, _Bus]] = {}
    _buses_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, url: str) -> None:
        super().__init__(url)
        with self._buses_lock:
            self._bus = self._buses.setdefault(url.rstrip("/"), _Bus())

    def publish(self, topic: str, body: bytes) -> None:
        with self._bus.lock:
            consumers = list(self._bus.consumers)
        for consumer in consumers:
            consumer.offer(topic, body)

    def consumer(self, patterns: Sequence[str]) -> Consumer:
        return MemoryConsumer(self._bus, patterns)


class MemoryConsumer(Consumer):
    def __init__(self, bus: _Bus, patterns: Sequence[str]) -> None:
        self._bus = bus
        self._matchers = [compile_pattern(validate_pattern(p)) for p in patterns]
        self._queue: asyncio.Queue[tuple[str, bytes]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def ready(self) -> bool:
        return self._queue is not None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        with self._bus.lock:
            self._bus.consumers.add(self)

    def offer(self, topic: str, body: bytes) -> None:
        loop, queue = self._loop, self._queue
        if loop is None or queue is None or loop.is_closed():
            return
        if any(match(topic) for match in self._matchers):
            loop.call_soon_threadsafe(queue.put_nowait, (topic, body))

    async def run(self, deliver: Deliver) -> None:
        if self._queue is None:
            await self.start()
        assert self._queue is not None
        ready = 0
        while True:
            topic, body = await self._queue.get()
            deliver_or_log(deliver, topic, body)
            ready += 1
            if ready >= self.yield_every or self._queue.empty():
                ready = 0
                await asyncio.sleep(0)  # let the streams write what was queued for them

    async def aclose(self) -> None:
        with self._bus.lock:
            self._bus.consumers.discard(self)
        self._queue = None
