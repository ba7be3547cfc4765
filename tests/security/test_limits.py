"""The limits of one worker, through real sockets: streams per client address, per user
and per worker, and the size and arrival time of a request head (README, "Limits").

Every 127.x.y.z address is this host, so distinct client addresses are real ones.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import pytest

from brokers.zeromq import ZeroMQBroker
from signalbus.tokens import issue_token

from ..helpers import HOST, RawStream, WorkerProcess, metric, send, status_of, wait_for

LIMITS = {
    "MAX_CONNECTIONS": 6,
    "MAX_CONNECTIONS_PER_USER": 2,
    "MAX_CONNECTIONS_PER_ADDRESS": 3,
    "MAX_HEADER_BYTES": 4096,
    "HEADER_TIMEOUT": 1,
    "RETRY_MS": 1000,
}
PUBLIC = "/events?topic=public.limits.%23"


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    env = {"SIGNALBUS_TEST_SETTINGS": json.dumps(LIMITS)}
    with WorkerProcess(tmp_path_factory.mktemp("limited"), env=env) as worker:
        yield worker


@pytest.fixture
def worker(limited: WorkerProcess) -> Iterator[WorkerProcess]:
    """The limited worker, with every stream of the test gone from its counts afterwards."""
    yield limited
    wait_for(lambda: metric(limited, "signalbus_sse_streams") == 0)



def error_of(stream: RawStream) -> str:
    return str(json.loads(stream.body())["error"])


def header(stream: RawStream, name: str) -> str | None:
    head = stream.data.partition(b"\r\n\r\n")[0].decode("latin-1")
    found = re.search(rf"^{name}: (.*)\r?$", head, re.MULTILINE | re.IGNORECASE)
    return found.group(1).strip() if found else None


# -- streams per address, per user, per worker ------------------------------------------------


def test_a_flood_from_one_address_gets_429_past_its_limit_while_others_are_served(worker):
    def one(_: int) -> RawStream:
        return RawStream(worker.port, PUBLIC, source="127.0.0.2", expect=None)

    with ThreadPoolExecutor(32) as pool:
        flood = list(pool.map(one, range(200)))
    try:
        statuses = sorted(s.status or 0 for s in flood)
        assert statuses == [200] * 3 + [429] * 197
        refused = next(s for s in flood if s.status == 429)
        assert error_of(refused) == "3 streams are open from 127.0.0.2; the limit is 3"
        assert header(refused, "retry-after") == "1"
        # Another address is served, and receives what is published.
        with RawStream(worker.port, PUBLIC, source="127.0.0.3") as other:
            broker = ZeroMQBroker(worker.broker_url, connect_timeout=5)
            event = send(broker, "public.limits.1")
            broker.close()
            assert other.read_until(event.id.encode())
        assert httpx.get(f"{worker.url}/healthz").status_code == 200
    finally:
        for stream in flood:
            stream.close()
    # Closed streams are given back: the address may open streams again.
    wait_for(lambda: metric(worker, "signalbus_sse_streams") == 0)
    with RawStream(worker.port, PUBLIC, source="127.0.0.2"):
        pass


def test_a_trusted_proxy_is_not_limited_but_the_clients_it_forwards_are(worker):
    # 127.0.0.1 is uvicorn's default trusted proxy (FORWARDED_ALLOW_IPS); the limit is 3.
    forwarded = "X-Forwarded-For: 203.0.113.9\r\n"
    with contextlib.ExitStack() as streams:
        for _ in range(4):
            streams.enter_context(RawStream(worker.port, PUBLIC, source="127.0.0.1"))
        streams.close()
        wait_for(lambda: metric(worker, "signalbus_sse_streams") == 0)
        for _ in range(3):
            streams.enter_context(RawStream(worker.port, PUBLIC, headers=forwarded))
        fourth = streams.enter_context(
            RawStream(worker.port, PUBLIC, headers=forwarded, expect=429)
        )
        assert error_of(fourth) == "3 streams are open from 203.0.113.9; the limit is 3"


def test_one_user_gets_429_past_its_limit_from_any_address_and_others_are_not_affected(worker):
    def url(user: int) -> str:
        token = issue_token([f"user.{user}.#"], user=SimpleNamespace(pk=user), ttl=600)
        return f"/events?topic=user.{user}.%23&token={token}"

    with (
        RawStream(worker.port, url(1), source="127.0.0.4"),
        RawStream(worker.port, url(1), source="127.0.0.5"),
        RawStream(worker.port, url(1), source="127.0.0.6", expect=429) as third,
        RawStream(worker.port, url(2), source="127.0.0.6"),
    ):
        assert error_of(third) == "2 streams are open for this user; the limit is 2"


def test_a_full_worker_asks_the_browser_to_come_back_later_instead_of_refusing(worker):
    busy_before = metric(worker, "signalbus_sse_busy_total")
    streams = [RawStream(worker.port, PUBLIC, source=f"127.0.1.{n}") for n in range(6)]
    try:
        with RawStream(worker.port, PUBLIC, source="127.0.1.200") as late:
            assert late.read_until(b"limit is 6\n\n")
            assert late.sock.recv(1) == b""  # and the worker ends it
        retry, comment, *_ = late.lines()
        # EventSource reconnects after `retry:` (1 to 3 times RETRY_MS, spread) on a 200;
        # on any other status it would give up for good.
        assert 1000 <= int(retry.removeprefix(b"retry: ")) <= 3000
        assert comment == b": worker busy: 6 streams open, the limit is 6"
        assert header(late, "content-type").startswith("text/event-stream")
        assert metric(worker, "signalbus_sse_busy_total") == busy_before + 1
    finally:
        for stream in streams:
            stream.close()
    wait_for(lambda: metric(worker, "signalbus_sse_streams") == 0)
    with RawStream(worker.port, PUBLIC, source="127.0.1.200") as back:
        assert b"busy" not in back.data


# -- the request head --------------------------------------------------------------------------


def head_answer(worker: WorkerProcess, head: bytes) -> bytes:
    with socket.create_connection((HOST, worker.port), timeout=5) as sock:
        sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_headers_over_the_limit_get_431_and_a_long_url_414(worker):
    padded = (
        f"GET {PUBLIC} HTTP/1.1\r\nHost: {HOST}\r\nX-Pad: {'x' * 5000}\r\n\r\n".encode()
    )
    answer = head_answer(worker, padded)
    assert status_of(answer) == 431
    assert answer.endswith(b'{"error": "the request head is over 4096 bytes"}')
    long_url = f"GET {PUBLIC}&topic={'a' * 5000} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    answer = head_answer(worker, long_url)
    assert status_of(answer) == 414
    assert answer.endswith(b'{"error": "the request line is over 4096 bytes"}')
    # Just under the limit is served.
    with RawStream(worker.port, PUBLIC, headers=f"X-Pad: {'x' * 3500}\r\n"):
        pass


def test_50_mb_of_headers_are_cut_off_at_the_limit_without_growing_the_worker(worker):
    rss_before = rss_kb(worker)
    started = time.monotonic()
    answer = b""
    with socket.create_connection((HOST, worker.port), timeout=5) as sock:
        sock.sendall(f"GET {PUBLIC} HTTP/1.1\r\nHost: {HOST}\r\n".encode())
        line = b"X-Pad: " + b"x" * 65000 + b"\r\n"
        try:
            for _ in range(800):  # 52 MB
                sock.sendall(line)
            pytest.fail("the worker read 52 MB of headers")
        except OSError:
            pass  # it hung up long before
        with contextlib.suppress(OSError):  # a reset may overtake the 431 it wrote
            answer = sock.recv(65536)
    assert time.monotonic() - started < 5
    if answer:
        assert status_of(answer) == 431
    assert rss_kb(worker) - rss_before < 10_000
    assert httpx.get(f"{worker.url}/healthz").status_code == 200


def rss_kb(worker: WorkerProcess) -> int:
    assert worker.proc is not None
    with open(f"/proc/{worker.proc.pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_a_head_that_does_not_arrive_in_time_gets_408_and_a_complete_one_is_left_alone(worker):
    # Opened first: the stream's head arrived in time, so it lives on past the timeout.
    with RawStream(worker.port, PUBLIC) as stream:
        with socket.create_connection((HOST, worker.port), timeout=5) as sock:
            sock.sendall(f"GET {PUBLIC} HTTP/1.1\r\nHost: {HOST}\r\n".encode())  # no blank line
            started = time.monotonic()
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            waited = time.monotonic() - started
        assert status_of(answer) == 408
        assert answer.endswith(b'{"error": "the request head did not arrive within 1 s"}')
        assert 0.8 < waited < 3
        time.sleep(1)
        broker = ZeroMQBroker(worker.broker_url, connect_timeout=5)
        event = send(broker, "public.limits.late")
        broker.close()
        assert stream.read_until(event.id.encode())


def test_a_connection_that_sends_nothing_is_closed_without_a_word(worker):
    with socket.create_connection((HOST, worker.port), timeout=5) as sock:
        started = time.monotonic()
        assert sock.recv(65536) == b""
        assert 0.8 < time.monotonic() - started < 3


# -- the access log ----------------------------------------------------------------------------


def test_the_access_log_has_a_line_per_stream_and_never_the_token(worker):
    token = issue_token(["user.9.#"], ttl=600)
    with RawStream(worker.port, f"/events?topic=user.9.%23&token={token}"):
        pass
    line = '"GET /events?topic=user.9.%23&token=** HTTP/1.1" 200'
    wait_for(lambda: line in worker.log())
    assert token not in worker.log()
    assert token[:20] not in worker.log()
