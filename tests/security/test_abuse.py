"""Hostile input at a real worker over real sockets: field values that try to forge SSE
frames, a private field that must never leave the process, topic encoding tricks, oversized
requests, hostile Last-Event-IDs and 200 concurrent private streams."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest

import signalbus
from brokers.zeromq import ZeroMQBroker
from signalbus.events import Event
from signalbus.tokens import issue_token
from tests.project.shop.models import Order

from ..helpers import RawStream, SSEReader, raw_request, status_of

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def token7() -> str:
    return issue_token(["user.7.#"], ttl=600)


# -- 1. a field value that tries to forge SSE frames -----------------------------------------

HOSTILE_VALUES = [
    "a\nb",
    "a\rb",
    "a\r\nb",
    "a\x00b",
    "\n\nevent: x\nid: 666\ndata: pwned",
    "\r\rid: 667\r\r",
    ": ping\n\nretry: 1",
    "a\u2028b\u2029c\x85d",
]


def test_hostile_field_values_cannot_forge_frames(bus):
    marker = f"public.abuse.m{uuid.uuid4().hex}"
    target = "/events?topic=shop.order.%23&topic=public.abuse.%23"
    raw = RawStream(bus.port, target)
    try:
        with SSEReader(f"{bus.url}{target}") as reader:
            orders = [Order.objects.create(status=value) for value in HOSTILE_VALUES]
            signalbus.publish(marker)
            events = reader.data(len(HOSTILE_VALUES) + 1)
            reader.assert_quiet()
        assert raw.read_until(marker.encode())
    finally:
        raw.close()
    saved = [e for e in events if e["type"] == "shop.order.created"]
    assert [e["data"]["id"] for e in saved] == [o.pk for o in orders]
    assert [e["data"]["status"] for e in saved] == HOSTILE_VALUES
    assert events[-1]["topic"] == marker
    lines = raw.lines()
    assert not [line for line in lines if line.startswith(b"event:")]
    assert len([line for line in lines if line.startswith(b"id:")]) == len(HOSTILE_VALUES) + 1
    assert not [line for line in lines if line.startswith(b"data: pwned")]
    assert b"\x00" not in raw.data
    assert b"\r" not in raw.data.partition(b"\r\n\r\n")[2].replace(b"\r\n", b"")


# -- 2. the unbound field never reaches any stream --------------------------------------------


def test_private_canary_never_reaches_any_stream(bus):
    canary = f"canary-{uuid.uuid4()}"
    marker = f"public.abuse.m{uuid.uuid4().hex}"
    token = issue_token(["shop.order.#"], ttl=600)
    targets = [
        "/events?topic=shop.%23&topic=public.abuse.%23",
        "/events?topic=shop.order.*.created&topic=public.abuse.%23",
        f"/events?topic=shop.order.%23&topic=public.abuse.%23&token={token}",
    ]
    streams = [RawStream(bus.port, target) for target in targets]
    try:
        for n in range(3):
            order = Order.objects.create(status=f"s{n}", secret=canary)
            order.secret = canary + "-updated"
            order.save()
            order.delete()
        signalbus.publish(marker)
        for stream in streams:
            assert stream.read_until(marker.encode()), stream.data[-500:]
    finally:
        for stream in streams:
            stream.close()
    every, created, tokened = (stream.lines() for stream in streams)
    assert len([line for line in every if line.startswith(b"id:")]) == 3 * 3 + 1
    assert len([line for line in created if line.startswith(b"id:")]) == 3 + 1
    assert len([line for line in tokened if line.startswith(b"id:")]) == 3 * 3 + 1
    for stream in streams:
        assert canary.encode() not in stream.data
        assert canary.split("-", 1)[1].encode() not in stream.data
        assert b'"secret"' not in stream.data
    assert canary not in bus.log()


# -- 3. encoding and case tricks on the topic parameter ---------------------------------------

TOPIC_TRICKS = [
    # (raw topic parameter, with the user.7.# token?, expected status)
    ("user.7.%23", True, 200),
    ("user.7.%23", False, 401),  # not public, no token, no session
    ("%23", True, 403),  # "#": everything
    ("%23", False, 401),
    ("%2523", True, 403),  # the literal word "%23", not inside user.7.#
    ("user.7.%2523", True, 200),  # the literal word "%23" under user.7: inside the grant
    ("user%2E8.%23", True, 403),  # decodes to user.8.#
    ("user.7%2E8.%23", True, 200),  # decodes to user.7.8.#: inside user.7.#
    ("USER.7.%23", True, 403),  # words are case-sensitive
    ("User.7.inbox", True, 403),
    ("user.7.%2A", True, 200),  # user.7.*
    ("user.%2A.inbox", True, 403),  # user.*.inbox
    ("user.7.", True, 400),  # trailing dot: an empty word
    ("user.7.%23.", True, 400),
    (".user.7.%23", True, 400),
    ("user..7", True, 400),
    ("user.7.%23%23", True, 400),  # "##" is no wildcard and no word
    ("user.7.a%2Ab", True, 400),  # "*" inside a word
    ("user.7.%00", True, 400),
    ("user.7.%0Ainbox", True, 400),
    ("user.7+.%23", True, 400),  # "+" is a space in a query
    ("user.%EF%BC%97.%23", True, 400),  # FULLWIDTH DIGIT SEVEN
    ("us%D0%B5r.7.%23", True, 400),  # CYRILLIC SMALL LETTER IE for "e"
    ("user.7.%E2%80%8B", True, 400),  # ZERO WIDTH SPACE
    ("user.7.%C0%AE", True, 400),  # an overlong "." is not UTF-8
    ("", True, 400),
]


@pytest.mark.parametrize(("topic", "with_token", "expected"), TOPIC_TRICKS)
def test_topic_tricks_get_the_exact_status(shared_worker, token7, topic, with_token, expected):
    target = f"/events?topic={topic}" + (f"&token={token7}" if with_token else "")
    raw = raw_request(
        shared_worker.port, target, "Connection: close\r\n", read_for=3, until=b"retry:"
    )
    assert status_of(raw) == expected, raw
    if expected == 200:
        assert b"retry:" in raw
    else:
        error = json.loads(raw.partition(b"\r\n\r\n")[2])["error"]
        assert error
        assert token7 not in error
        assert b"text/event-stream" not in raw


# -- 4. oversized inputs ----------------------------------------------------------------------


def test_32_topics_are_allowed_and_33_get_400(shared_worker):
    def target(count: int) -> str:
        return f"{shared_worker.url}/events?" + "&".join(f"topic=shop.t{n}" for n in range(count))

    with httpx.stream("GET", target(32)) as response:
        assert response.status_code == 200
    response = httpx.get(target(33))
    assert response.status_code == 400
    assert "33 topics" in response.json()["error"]


def test_pattern_length_limit(shared_worker):
    longest = "shop." + "a" * 250  # 255 bytes
    with httpx.stream("GET", f"{shared_worker.url}/events?topic={longest}") as response:
        assert response.status_code == 200
    for pattern in (longest + "a", "shop." + "a" * 10240, "shop." + "é" * 126):
        response = httpx.get(f"{shared_worker.url}/events?topic={pattern}")
        assert response.status_code == 400
        assert "the limit is 255" in response.json()["error"]


# -- 5. hostile Last-Event-ID -----------------------------------------------------------------

HOSTILE_IDS = [
    ("query", "a" * 10240),
    ("query", "a%0D%0Aevent:%20x%0D%0A"),
    ("query", "abc%0Ddata:x"),
    ("query", "abc%00"),
    ("query", "a" * 65),
    ("query", "..%2F..%2Fetc"),
    ("query", "%F0%9F%92%A5"),
    ("header", "a" * 10240),
    ("header", "a" * 65),
    ("header", "0" * 32),  # well formed, never issued
]


@pytest.mark.parametrize(("via", "value"), HOSTILE_IDS)
def test_hostile_last_event_id_gets_one_reset_at_once(bus, via, value):
    held = signalbus.publish(f"public.abuse.held{uuid.uuid4().hex}")
    with SSEReader(f"{bus.url}/events?topic=public.abuse.%23") as reader:  # wait for it to land
        signalbus.publish("public.abuse.sync")
        reader.take(1)
    target = f"{bus.url}/events?topic=public.abuse.%23"
    headers = {}
    if via == "query":
        target += f"&lastEventId={value}"
    else:
        headers["Last-Event-ID"] = value
    started = time.monotonic()
    with SSEReader(target, headers=headers) as reader:
        first = reader.get(timeout=1)
        elapsed = time.monotonic() - started
        reset = json.loads(first.data)
        assert reset["type"] == "signalbus.reset"
        assert first.id == reset["id"]
        assert reset["id"] >= held.id
        live = signalbus.publish("public.abuse.live")
        assert reader.get(timeout=2).id == live.id  # one reset, then the live stream
        reader.assert_quiet()
    assert elapsed < 1


# -- 6. 200 concurrent private streams --------------------------------------------------------


async def _one_user(client: httpx.AsyncClient, url: str, done: str, opened: asyncio.Queue):
    async with client.stream("GET", url) as response:
        await opened.put(response.status_code)
        got = []
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                event = json.loads(line[5:])
                if event["topic"] == done:
                    return got
                got.append(event)
    return got


def test_200_users_each_get_exactly_their_own_event(shared_worker):
    users = 200
    done = f"public.abuse.done{uuid.uuid4().hex}"
    urls = [
        f"{shared_worker.url}/events?topic=user.{i}.%23&topic={done}"
        f"&token={issue_token([f'user.{i}.#'], ttl=600)}"
        for i in range(users)
    ]
    broker = ZeroMQBroker(shared_worker.broker_url, connect_timeout=5)
    sent: dict[int, str] = {}

    def publish_all() -> None:
        for i in range(users):
            event = Event.create(f"user.{i}.inbox", {"for": i, "secret": f"S{i}S"})
            broker.publish(event.topic, event.encode())
            sent[i] = event.id
        broker.publish(done, Event.create(done).encode())

    async def main() -> list[list[dict]]:
        limits = httpx.Limits(max_connections=users + 10, max_keepalive_connections=0)
        timeout = httpx.Timeout(15, read=15)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
            opened: asyncio.Queue = asyncio.Queue()
            tasks = [asyncio.create_task(_one_user(client, u, done, opened)) for u in urls]
            statuses = [await asyncio.wait_for(opened.get(), 15) for _ in range(users)]
            assert statuses == [200] * users
            await asyncio.to_thread(publish_all)
            return await asyncio.wait_for(asyncio.gather(*tasks), 15)

    started = time.monotonic()
    try:
        received = asyncio.run(main())
    finally:
        broker.close()
    assert time.monotonic() - started < 20
    for i, events in enumerate(received):
        assert [(e["id"], e["topic"], e["data"]) for e in events] == [
            (sent[i], f"user.{i}.inbox", {"for": i, "secret": f"S{i}S"})
        ], f"user {i}"
