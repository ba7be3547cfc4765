"""One SSE stream written to an ASGI ``send``, and the one clock every stream of an app shares.

This replaces sse-starlette's ``EventSourceResponse``, which cost more per write than
the write itself (benchmarks/README.md, "What the figures say": 83 % of the worker's
CPU at 1,000 clients in the per-write path, 16 % of it in the anyio cancel scope put
around every send for its ``send_timeout``). Deliberate differences:

- **No timer per send.** A stream notes the clock's tick and a flag before a send and
  clears the flag after: two attribute writes. `StreamClock`, one ``call_later`` chain
  per app, finds a send that started more than ``send_timeout`` ago and ends that
  stream; the client resumes with ``Last-Event-ID``. A stream whose subscription was
  closed (shutdown, overflow) while its send is stuck is ended at the next tick.
- **No ping task.** The same clock queues ``: ping`` on a stream that wrote nothing for
  ``keepalive`` seconds; the stream writes it as any other frame.
- **Two tasks a stream.** The server's task, the ASGI call, waits in ``receive()`` for
  ``http.disconnect`` (uvicorn reports a disconnect only there: its ``send`` returns
  quietly once the client is gone), so that an idle stream ends at once. A writer task
  of the stream's own does every write: resuming it walks two coroutine frames, where
  resuming the server's task walks one per middleware layer.
- **Direct writes.** Under the worker's own uvicorn protocol (`bridges.http_limits`), which
  hands the request's cycle over in the scope, each live batch is written as one chunk
  straight to the transport by the hub's flush, without a task switch or an ASGI message:
  only while the transport is not paused, the connection open and the writer task idle
  with nothing in hand, so that order holds. Otherwise the batch goes to the writer task
  and ASGI ``send`` as before, which waits for the client (back-pressure, and the send
  timeout below). The head, ``retry:``, the replay and the last chunk always go through
  ``send``, so uvicorn's state stays its own.
- No ``Connection: keep-alive`` header: HTTP/1.1 connections are persistent anyway, and
  HTTP/2 forbids the header.
- Shutdown needs no watcher of its own: the worker closes every subscription
  (``Hub.close_all``) and each stream ends its response.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import Message, Receive, Scope, Send
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    from signalbus.hub import DirectWriter, Hub, Subscription

__all__ = ["PING", "SSEResponse", "StreamClock", "StreamStats"]

logger = logging.getLogger("signalbus.sse")

PING = b": ping\n\n"
REPLAY_CHUNK = 512  # replayed frames per write
_HEADERS = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),  # nginx: pass each write on, do not buffer the stream
)


_last_chunk: tuple[bytes, bytes] = (b"", b"")


def _chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk. The hub hands the same bytes to every stream of a
    burst, so the chunk is built once per burst and shared, not once per stream."""
    global _last_chunk
    last = _last_chunk  # one read: another thread's loop may replace it meanwhile
    if last[0] is not data:
        _last_chunk = last = (data, b"%x\r\n%b\r\n" % (len(data), data))
    return last[1]


class StreamStats:
    """Counters of the endpoint itself, read by ``/metrics``."""

    def __init__(self) -> None:
        self.open = 0
        self.opened = 0
        self.rejected: dict[int, int] = {}
        self.send_timeouts = 0


class StreamClock:
    """One periodic timer for all of an app's streams: pings the idle, cuts the stuck.

    It runs only while streams are open, so a stopped worker leaves no timer behind.
    Both limits are kept in whole ticks and rounded up: a ping never comes before
    ``keepalive`` seconds of silence, a cut never before ``send_timeout``.
    """

    def __init__(self, *, keepalive: float, send_timeout: float, stats: StreamStats) -> None:
        self.period = min(1.0, keepalive / 4, send_timeout / 4)
        self.tick = 0
        self.stats = stats
        # A mark taken during tick t is up to one period older than t: hence the + 1
        # (and the epsilon: 0.6 / 0.15 is 4.000000000000001 in floating point).
        self._ping_ticks = math.ceil(keepalive / self.period - 1e-9) + 1
        self._cut_ticks = math.ceil(send_timeout / self.period - 1e-9) + 1
        self._streams: set[SSEResponse] = set()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, stream: SSEResponse) -> None:
        self._streams.add(stream)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.period, self._on_tick)

    def discard(self, stream: SSEResponse) -> None:
        self._streams.discard(stream)
        if not self._streams and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_tick(self) -> None:
        self.tick = tick = self.tick + 1
        silent_since = tick - self._ping_ticks
        stuck_since = tick - self._cut_ticks
        for stream in self._streams:
            if stream.sending:
                if stream.mark <= stuck_since:
                    stream.cut(timed_out=True)
                elif stream.mark < tick - 1 and stream.sub.closed:
                    # Nothing more to send (shutdown, overflow, expiry) and the client is not
                    # reading: do not keep the worker's shutdown waiting for the send timeout.
                    stream.cut(timed_out=False)
            elif stream.mark <= silent_since:
                stream.mark = tick
                stream.sub.push(PING)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.period, self._on_tick) if self._streams else None


class SSEResponse:
    """The ASGI response of one stream: headers, ``retry:``, the replayed frames, then each
    batch the subscription gives, joined into one write, until it closes."""

    __slots__ = (
        "_cut",
        "_expires",
        "_first",
        "_headers",
        "_hub",
        "_on_end",
        "_retry_ms",
        "_server_task",
        "clock",
        "mark",
        "sending",
        "sub",
    )

    def __init__(
        self,
        hub: Hub,
        sub: Subscription,
        first: list[bytes],
        *,
        clock: StreamClock,
        retry_ms: int,
        headers: Mapping[str, str] | None = None,
        expires: float | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        """``first``: frames to send before the live ones (a replay or a reset);
        ``expires``: a Unix time at which the stream ends (its token's expiry);
        ``on_end``: called once when the stream ends, however it ends."""
        self._hub = hub
        self.sub = sub
        self._first = first
        self.clock = clock
        self._retry_ms = retry_ms
        self._headers = [
            *_HEADERS,
            *(
                (k.lower().encode("latin-1"), v.encode("latin-1"))
                for k, v in (headers or {}).items()
            ),
        ]
        self._expires = expires
        self._on_end = on_end
        self._server_task: asyncio.Task[object] | None = None
        self._cut: str | None = None
        self.sending = False
        self.mark = clock.tick

    def cut(self, *, timed_out: bool) -> None:
        """End a stream whose send has not returned: its client stopped reading."""
        self._end("send timeout" if timed_out else "closed while stuck")

    def _end(self, reason: str) -> None:
        """Wake the server's task out of ``receive()`` to end the response without its last
        chunk; the writer is cancelled on the way out."""
        if self._cut is None and self._server_task is not None:
            self._cut = reason
            self.sub.close(reason)
            self._server_task.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The server's task runs under the frames of its middleware, all walked again each
        # time it resumes: so it only waits in receive() for the client to go (or the
        # response to end), and a task of its own, two frames deep, does every write.
        loop = asyncio.get_running_loop()
        self._server_task = task = asyncio.current_task()
        direct = scope.get("extensions", {}).get("signalbus.direct")
        writer = loop.create_task(self._stream(send, direct["cycle"] if direct else None))
        writer.add_done_callback(self._on_writer_done)
        expiry = None
        if self._expires is not None:
            delay = max(0.0, self._expires - time.time())
            expiry = loop.call_later(delay, self.sub.close, "token expired")
        stats = self.clock.stats
        stats.open += 1
        stats.opened += 1
        self.clock.add(self)
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except asyncio.CancelledError:
            if self._cut is None or task is None or task.uncancel():
                raise
            if self._cut == "send timeout":
                stats.send_timeouts += 1
                logger.info("closed a stream whose client stopped reading")
        finally:
            self.sub.close("disconnected")  # no-op once closed for another reason
            writer.cancel()
            if expiry is not None:
                expiry.cancel()
            self.clock.discard(self)
            stats.open -= 1
            self._hub.unsubscribe(self.sub)
            self.sub.writer = None  # it refers to this response: no cycle left for the GC
            if self._on_end is not None:
                self._on_end()
            self._server_task = None
        if self._cut == "writer failed" and (error := writer.exception()) is not None:
            raise error  # for the server to log, as any application error

    def _on_writer_done(self, writer: asyncio.Task[None]) -> None:
        if not writer.cancelled() and writer.exception() is not None:
            self._end("writer failed")

    async def _stream(self, send: Send, cycle: RequestResponseCycle | None) -> None:
        start: Message = {"type": "http.response.start", "status": 200, "headers": self._headers}
        self._headers = []
        try:
            await send(start)
            del start
            await self._write(send, b"retry: %d\n\n" % self._retry_ms)
            first, self._first = self._first, []
            for at in range(0, len(first), REPLAY_CHUNK):
                await self._write(send, b"".join(first[at : at + REPLAY_CHUNK]))
            del first
            sub, clock = self.sub, self.clock
            if cycle is not None:
                sub.writer = self._direct_writer(cycle)
            while (batch := await sub.next_batch()) is not None:
                # The two writes the clock reads, instead of a timer around the send.
                self.mark = clock.tick
                self.sending = True
                await send(
                    {
                        "type": "http.response.body",
                        "body": batch[0] if len(batch) == 1 else b"".join(batch),
                        "more_body": True,
                    }
                )
                self.sending = False
            if sub.reason != "disconnected":
                # The last chunk ends the response, and so the server's receive() too.
                await self._write(send, b"", more_body=False)
        except OSError:
            pass  # ASGI 2.4 servers raise it from send() once the client is gone

    def _direct_writer(self, cycle: RequestResponseCycle) -> DirectWriter | None:
        """Writes one chunk of the response to its transport, as uvicorn's ``send`` would,
        unless the client is behind or gone; None when the response is not chunked."""
        if not cycle.chunked_encoding:
            return None
        transport, flow, clock = cycle.transport, cycle.flow, self.clock

        def write(data: bytes) -> bool:
            if flow.write_paused or cycle.disconnected or transport.is_closing():
                return False
            self.mark = clock.tick
            transport.write(_chunk(data))
            return True

        return write

    async def _write(self, send: Send, body: bytes, *, more_body: bool = True) -> None:
        self.mark = self.clock.tick
        self.sending = True
        await send({"type": "http.response.body", "body": body, "more_body": more_body})
        self.sending = False
