"""What each stream's response does on its own (`bridges.sse_response`): keep-alive pings after
silence, an idle client's disconnect, a client that stops reading, shutdown.

Real sockets throughout: a worker process where its command line reaches the behaviour,
else the worker's app under uvicorn in a thread of this process (`AppServer`), which can
be given a short ``send_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable

import httpx
import pytest
import uvicorn

from bridges.http_limits import head_limited_protocol
from bridges.sse import create_app
from bridges.sse_response import SSEResponse
from signalbus.conf import Settings
from signalbus.events import Event
from signalbus.hub import Hub, Subscription

from ..helpers import (
    HOST,
    SSEReader,
    WorkerProcess,
    events_url,
    free_port,
    metric,
    received,
    send,
    stop_cleanly,
    wait_for,
)

REQUEST = b"GET /events?topic=shop.%23 HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n\r\n"


class AppServer:
    """`bridges.sse.create_app` served by uvicorn on a loopback port, in a thread with its
    own event loop; events go to its hub through that loop. ``direct``: on the worker's
    own protocol, which lets streams write straight to the socket; else uvicorn's."""

    def __init__(
        self, *, send_timeout: float = 30.0, keepalive: float = 15.0, direct: bool = True
    ) -> None:
        self.hub = Hub()
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        settings = Settings(public_topics=("shop.#",), keepalive=keepalive)
        app = create_app(self.hub, settings, ready=lambda: True, send_timeout=send_timeout)
        config = uvicorn.Config(
            app,
            http=head_limited_protocol(16_384, 10.0, {}) if direct else "httptools",
            host=HOST,
            port=self.port,
            lifespan="off",
            ws="none",
            log_level="warning",
            log_config=None,  # uvicorn's records reach pytest's caplog
        )
        self.server = uvicorn.Server(config)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.loop.run_until_complete(self.server.serve())
        self.loop.close()

    def publish(self, topic: str, data: object = None) -> Event:
        event = Event.create(topic, data)
        self.loop.call_soon_threadsafe(self.hub.publish, event.id, event.topic, event.encode())
        return event

    def metric(self, name: str) -> float:
        for line in httpx.get(self.url + "/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not in /metrics")

    def __enter__(self) -> AppServer:
        self._thread.start()
        wait_for(lambda: self.server.started)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.hub.close_all)
        self.server.should_exit = True
        self._thread.join(10)


def open_stream(port: int, rcvbuf: int | None = None) -> socket.socket:
    """A raw SSE client past its response head and ``retry:`` line."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((HOST, port))
    sock.sendall(REQUEST)
    sock.settimeout(5)
    data = b""
    while b"retry:" not in data:
        data += sock.recv(4096)
    return sock


def read_timed(sock: socket.socket, seconds: float) -> list[tuple[float, bytes]]:
    """Everything the server writes for ``seconds``, each read with its arrival time."""
    return [(time.monotonic(), chunk) for chunk in received(sock, time.monotonic() + seconds)]


def _send_buffer_max() -> int:
    with (
        contextlib.suppress(OSError, ValueError, IndexError),
        open("/proc/sys/net/ipv4/tcp_wmem") as limits,
    ):
        return int(limits.read().split()[2])
    return 4 << 20



# -- keep-alive ----------------------------------------------------------------------------


def test_ping_comes_only_after_keepalive_seconds_of_silence(tmp_path):
    keepalive = 0.6
    env = {"SIGNALBUS_TEST_KEEPALIVE": str(keepalive)}
    with WorkerProcess(tmp_path, env=env) as worker:
        from brokers.zeromq import ZeroMQBroker

        publisher = ZeroMQBroker(worker.broker_url, connect_timeout=5)
        sock = open_stream(worker.port)
        reads: list[tuple[float, bytes]] = []

        def read() -> None:
            reads.extend(read_timed(sock, 3.2))

        reader = threading.Thread(target=read)
        reader.start()
        for i in range(8):  # an event every 0.25 s: never silent for 0.6 s
            send(publisher, f"shop.k.{i}")
            time.sleep(0.25)
        reader.join()
        sock.close()
        publisher.close()
    # Each ping must follow at least KEEPALIVE seconds without any write (a little less as
    # the client sees it: the write before it may have been delivered later than the ping).
    pings = [i for i, (_, chunk) in enumerate(reads) if b": ping\n\n" in chunk]
    assert pings, "no ping after the events stopped"
    for i in pings:
        assert i > 0
        assert reads[i][0] - reads[i - 1][0] > keepalive - 0.1, (i, reads)
    last_event = max(at for at, chunk in reads if b"id: " in chunk)
    assert reads[pings[-1]][0] > last_event
    assert min(reads[i][0] for i in pings if reads[i][0] > last_event) < last_event + 1.5


# -- disconnects ---------------------------------------------------------------------------


def test_idle_client_that_hangs_up_is_unsubscribed_at_once(shared_worker):
    before = metric(shared_worker, "signalbus_sse_streams")
    socks = [open_stream(shared_worker.port) for _ in range(3)]
    wait_for(lambda: metric(shared_worker, "signalbus_sse_streams") == before + 3, timeout=5)
    started = time.monotonic()
    for sock in socks:
        sock.close()
    # Nothing is written to them (KEEPALIVE is 15 s here): only the disconnect can end them.
    wait_for(lambda: metric(shared_worker, "signalbus_sse_streams") == before, timeout=3)
    assert time.monotonic() - started < 2


# -- a client that stops reading -----------------------------------------------------------


def test_client_that_stops_reading_is_cut_after_send_timeout_and_counted():
    with AppServer(send_timeout=0.5) as server, SSEReader(events_url(server, "shop.#")) as fast:
        stuck = open_stream(server.port, rcvbuf=4096)
        wait_for(lambda: server.metric("signalbus_sse_streams") == 2, timeout=5)
        # Far more than the socket buffers hold (loopback send buffers grow to tcp_wmem's
        # maximum), then a trickle so that a send to the stuck client is under way: far
        # fewer events than the client queue (1,000), so only the send timeout can end it.
        count = 3 * _send_buffer_max() // 50_000 + 40
        sent = [server.publish(f"shop.big.{i}", {"pad": "x" * 50_000}) for i in range(count)]
        deadline = time.monotonic() + 10
        while server.metric("signalbus_slow_client_disconnects_total") < 1:
            assert time.monotonic() < deadline, "the stuck stream was never cut"
            sent.append(server.publish("shop.trickle"))
            time.sleep(0.1)
        assert server.metric("signalbus_sse_streams") == 1
        # The other client was never slowed and has every event, in order.
        assert [e.id for e in fast.take(len(sent), timeout=20)] == [e.id for e in sent]
        # The cut stream's socket is closed: once read, it ends.
        stuck.settimeout(10)
        while stuck.recv(1 << 20):
            pass
        stuck.close()


# -- shutdown ------------------------------------------------------------------------------


def test_shutdown_ends_idle_busy_and_stuck_streams_within_5_s(tmp_path):
    with WorkerProcess(tmp_path) as worker:
        from brokers.zeromq import ZeroMQBroker

        idle = [SSEReader(events_url(worker, "shop.#")) for _ in range(3)]
        stuck = open_stream(worker.port, rcvbuf=4096)
        publisher = ZeroMQBroker(worker.broker_url, connect_timeout=5)
        count = 3 * _send_buffer_max() // 50_000 + 40
        for i in range(count):
            send(publisher, f"shop.big.{i}", {"pad": "x" * 50_000})
        for reader in idle:
            reader.take(count, timeout=30)
        publisher.close()
        stop_cleanly(worker, idle)
        stuck.close()


# -- a failing writer ----------------------------------------------------------------------


@pytest.mark.parametrize("direct", [False, True], ids=["writer task", "direct writer"])
def test_an_error_in_a_stream_ends_it_logged_and_unsubscribed(monkeypatch, caplog, direct):
    with AppServer(direct=direct) as server:
        if direct:

            def broken_writer(self: SSEResponse, cycle: object) -> Callable[[bytes], bool]:
                def write(data: bytes) -> bool:
                    raise RuntimeError("the hub broke")

                return write

            monkeypatch.setattr(SSEResponse, "_direct_writer", broken_writer)
        sock = open_stream(server.port)
        wait_for(lambda: server.metric("signalbus_sse_streams") == 1, timeout=5)

        async def broken(self: Subscription) -> None:
            raise RuntimeError("the hub broke")

        if not direct:
            monkeypatch.setattr(Subscription, "next_batch", broken)
        server.publish("shop.x")  # wakes the stream, whose next wait now fails
        sock.settimeout(5)
        while sock.recv(65536):  # the server closes the connection
            pass
        sock.close()
        wait_for(lambda: server.metric("signalbus_sse_streams") == 0, timeout=5)
        assert server.hub.subscriptions == 0
    assert "the hub broke" in caplog.text


# -- direct writes ---------------------------------------------------------------------------


def read_to_end(
    sock: socket.socket,
    data: bytes = b"",
    *,
    until: bytes = b"\r\n0\r\n\r\n",
    pace: float = 0.0,
    timeout: float = 30,
) -> bytes:
    """``data`` and what the server writes after it (at least one read) until ``until``
    ends it (by default, the response's last chunk), reading every ``pace`` seconds."""
    deadline = time.monotonic() + timeout
    start = len(data)
    while len(data) == start or not data.endswith(until):
        assert time.monotonic() < deadline, data[-200:]
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        assert chunk, "closed before the end"
        data += chunk
        time.sleep(pace)
    return data


def dechunk(response: bytes) -> bytes:
    """The body of a chunked HTTP response, checking its framing on the way."""
    head, _, rest = response.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower(), head
    body = b""
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        assert rest[size : size + 2] == b"\r\n", rest[size : size + 10]
        if size == 0:
            assert rest == b"\r\n"
            return body
        body, rest = body + rest[:size], rest[size + 2 :]


def event_ids(body: bytes) -> list[str]:
    return [line[4:].decode() for line in body.split(b"\n") if line.startswith(b"id: ")]


def test_events_keep_their_order_when_a_slow_client_switches_between_direct_and_queued():
    """A client that reads slowly fills its socket, so the stream falls back to its writer
    task and back again as it drains: each event arrives once, in order."""
    with AppServer() as server, socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.connect((HOST, server.port))
        sock.sendall(REQUEST)
        wait_for(lambda: server.metric("signalbus_sse_streams") == 1, timeout=5)
        sent: list[Event] = []

        def publish() -> None:
            for i in range(300):  # ~6 MB at ~2 MB/s, read at ~1 MB/s: paused, then not
                sent.append(server.publish(f"shop.big.{i}", {"pad": "x" * 20_000}))
                if i % 20 == 19:
                    time.sleep(0.2)
            for i in range(50):
                sent.append(server.publish(f"shop.small.{i}"))
                time.sleep(0.01)

        publisher = threading.Thread(target=publish)
        publisher.start()
        response = b""
        deadline = time.monotonic() + 60
        while b"shop.small.49" not in response[-1000:]:
            assert time.monotonic() < deadline, response[-200:]
            response = read_to_end(sock, response, until=b"\n\n\r\n", pace=0.05, timeout=60)
        publisher.join()
        server.loop.call_soon_threadsafe(server.hub.close_all)
        response = read_to_end(sock, response, timeout=10)
        assert server.metric("signalbus_slow_client_disconnects_total") == 0
    body = dechunk(response)
    assert body.startswith(b"retry: ")
    assert event_ids(body) == [e.id for e in sent]


def test_http_1_0_stream_gets_its_events_and_a_complete_response():
    """uvicorn answers HTTP/1.0 with a chunked response and closes after it: the direct
    chunks and uvicorn's last one frame one valid body."""
    with AppServer() as server, socket.socket() as sock:
        sock.connect((HOST, server.port))
        sock.sendall(REQUEST.replace(b"HTTP/1.1", b"HTTP/1.0"))
        wait_for(lambda: server.metric("signalbus_sse_streams") == 1, timeout=5)
        sent = []
        for i in range(5):
            sent.append(server.publish(f"shop.old.{i}"))
            time.sleep(0.02)
        time.sleep(0.2)
        server.loop.call_soon_threadsafe(server.hub.close_all)
        response = read_to_end(sock, timeout=10)
        sock.settimeout(5)
        assert sock.recv(1) == b""  # not kept alive
    assert b"connection: close" in response.lower().partition(b"\r\n\r\n")[0]
    assert event_ids(dechunk(response)) == [e.id for e in sent]
