"""The load generator of ``e2e_latency``: N SSE clients in one process (asyncio on uvloop).

Each client is a raw asyncio protocol: it sends one ``GET /events`` and scans
what arrives for the marker the publisher writes in every Tick's payload,
``r=<run> s=<seq> t=<time_ns before save()>``. A marker of the current run
is one delivery, with latency = the arrival time (``time.time_ns()``, read as
the bytes come off the socket) minus ``t``. Run 0 is the warm-up: it proves
that a client is subscribed.

The parent drives the process over a `multiprocessing` pipe, one reply per
command: ``connect``, ``status``, ``begin RUN``, ``end``, ``close``.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import re
import signal
import socket
import struct
import time
from multiprocessing.connection import Connection
from typing import Any, cast

MARK = re.compile(rb"r=(\d+) s=\d+ t=(\d+)")
# A chunk-size line of HTTP/1.1 chunked encoding: one per write of the server's app, so
# deliveries / chunks tells how many events the worker joins into one write.
CHUNK = re.compile(rb"^[0-9a-fA-F]+\r$", re.M)
LINGER_RST = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT pile-up between runs
CONNECTS_IN_FLIGHT = 64


class Client(asyncio.Protocol):
    """One SSE connection; counts once its ``200`` header arrived."""

    def __init__(self, gen: LoadGenerator) -> None:
        self.gen = gen
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.tail = b""
        self.open = False
        self.warm = False
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.gen.request)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        if not self.open:
            data = self._take_head(data)
            if not self.open:
                return
        buf = self.tail + data if self.tail else data
        cut = buf.rfind(b"\n") + 1  # whole lines only: a marker may straddle two reads
        self.tail = buf[cut:]
        if cut:
            self.gen.on_lines(self, buf, cut, now)

    def _take_head(self, data: bytes) -> bytes:
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return b""
        if b" 200 " not in self.head.split(b"\r\n", 1)[0] + b" ":
            self.gen.errors.append(self.head.split(b"\r\n", 1)[0].decode(errors="replace"))
            self._settle(False)
            self.close()
            return b""
        rest, self.head, self.open = self.head[end + 4 :], b"", True
        self.gen.open += 1
        self._settle(True)
        return rest

    def _settle(self, ok: bool) -> None:
        if not self.ready.done():
            self.ready.set_result(ok)

    def connection_lost(self, exc: Exception | None) -> None:
        self._settle(False)
        if self.open:
            self.gen.open -= 1
            self.gen.dropped += 0 if self.closing else 1

    def close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(OSError):
                sock = self.transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            self.transport.abort()


class LoadGenerator:
    """The clients of this process and what they received in the current run."""

    def __init__(self, host: str, port: int, target: str, clients: int) -> None:
        self.host, self.port, self.clients = host, port, clients
        self.request = (
            f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        ).encode()
        self.subs: list[Client] = []
        self.open = self.dropped = 0
        self.errors: list[str] = []
        self.run = b"-1"
        self.latencies = array.array("q")
        self.writes = 0

    def on_lines(self, client: Client, buf: bytes, end: int, now: int) -> None:
        run, latencies = self.run, self.latencies
        self.writes += len(CHUNK.findall(buf, 0, end))
        for marker_run, stamp in MARK.findall(buf, 0, end):
            if marker_run == run:
                latencies.append(now - int(stamp))
            elif marker_run == b"0":
                client.warm = True

    async def connect_one(self, limit: asyncio.Semaphore) -> bool:
        async with limit:
            for attempt in range(5):
                if await self._try_connect():
                    return True
                await asyncio.sleep(0.1 * (attempt + 1))
        return False

    async def _try_connect(self) -> bool:
        loop = asyncio.get_running_loop()
        try:
            _, client = await asyncio.wait_for(
                loop.create_connection(lambda: Client(self), self.host, self.port), 10
            )
        except (OSError, TimeoutError):
            return False
        try:
            ok = await asyncio.wait_for(asyncio.shield(client.ready), 20)
        except TimeoutError:
            ok = False
        if ok:
            self.subs.append(client)
        else:
            client.close()
        return ok

    async def connect_all(self) -> int:
        """Open every client (a few in flight at a time); the number that failed."""
        limit = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
        results = await asyncio.gather(*(self.connect_one(limit) for _ in range(self.clients)))
        return results.count(False)

    def status(self) -> dict[str, Any]:
        return {
            "open": self.open,
            "warm": sum(1 for c in self.subs if c.warm),
            "dropped": self.dropped,
            "received": len(self.latencies),
            "writes": self.writes,
            "errors": self.errors[:3],
        }

    def summary(self) -> dict[str, Any]:
        """The counts of the run that ends, and its latencies (ns, ``array("q")`` bytes):
        the parent takes the percentiles over every load generator's."""
        out = {**self.status(), "latencies": self.latencies.tobytes()}
        self.run, self.latencies = b"-1", array.array("q")
        return out


class Driver:
    """The pipe end in this process: each command gets exactly one reply."""

    def __init__(self, conn: Connection, gen: LoadGenerator, done: asyncio.Future[None]) -> None:
        self.conn, self.gen, self.done = conn, gen, done

    def reply(self, obj: object) -> None:
        # The event loop made the pipe non-blocking; a reply is sent whole.
        fd = self.conn.fileno()
        os.set_blocking(fd, True)
        try:
            self.conn.send(obj)
        finally:
            os.set_blocking(fd, False)

    def on_command(self) -> None:
        command, *rest = self.conn.recv()
        gen = self.gen
        if command == "connect":
            task = asyncio.ensure_future(gen.connect_all())
            task.add_done_callback(lambda t: self.reply({"failed": t.result(), **gen.status()}))
        elif command == "status":
            self.reply(gen.status())
        elif command == "begin":
            gen.run, gen.latencies, gen.writes = str(rest[0]).encode(), array.array("q"), 0
            self.reply(True)
        elif command == "end":
            self.reply(gen.summary())
        elif command == "close":
            for client in gen.subs:
                client.close()
            self.reply(True)
            asyncio.get_running_loop().call_later(0.2, self.done.set_result, None)


def main(conn: Connection, host: str, port: int, target: str, clients: int) -> None:
    """The process: the parent stops it (SIGTERM) if it does not end on ``close``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    done: asyncio.Future[None] = loop.create_future()
    driver = Driver(conn, LoadGenerator(host, port, target, clients), done)
    loop.add_reader(conn.fileno(), driver.on_command)
    loop.run_until_complete(done)
    loop.close()
