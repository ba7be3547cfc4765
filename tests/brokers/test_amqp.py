"""The AMQP adapter against a real RabbitMQ on 127.0.0.1:5672 (tests marked ``amqp``).

Each test has an exchange of its own, deleted after it. Faults are made with a TCP
proxy between the adapter and the broker (`tests.faults.proxy`), never by stopping
the RabbitMQ that other tests share. What the adapter shares with every transport
is in the conformance suite; this module holds what is AMQP's own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import anyio
import httpx
import pika
import pytest
from hypothesis import given
from hypothesis import strategies as st

from brokers.amqp import AMQPBroker, headline
from brokers.amqp_consumer import AMQPConsumer
from signalbus import BrokerUnavailable, ConfigurationError, Event, PublishError
from tests.faults.proxy import TCPProxy
from tests.helpers import (
    HOST,
    ROOT,
    SSEReader,
    child_env,
    consuming,
    free_port,
    reap,
    send,
    wait_for,
)
from tests.rabbitmq import AMQP_URL

pytestmark = pytest.mark.anyio

WAIT = 10.0  # a generous bound for what should take milliseconds


@pytest.fixture
def broker(exchange: str) -> Iterator[AMQPBroker]:
    broker = AMQPBroker(AMQP_URL, exchange=exchange, publish_timeout=5)
    yield broker
    broker.close()


@pytest.fixture
def proxy() -> Iterator[TCPProxy]:
    with TCPProxy((HOST, 5672)) as proxy:
        yield proxy


def via(proxy: TCPProxy) -> str:
    return f"amqp://guest:guest@{HOST}:{proxy.port}/"


class PlainConsumer:
    """A pika consumer that knows nothing of signalbus: a queue bound to the exchange."""

    def __init__(self, exchange: str, patterns: Sequence[str] = ("#",)) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        self.channel = self.connection.channel()
        self.channel.exchange_declare(exchange, "topic", durable=True)
        self.queue = self.channel.queue_declare("", exclusive=True).method.queue
        for pattern in patterns:
            self.channel.queue_bind(self.queue, exchange, pattern)

    def get(self, count: int, *, quiet: float = 0.3) -> list[tuple[Any, Any, bytes]]:
        """The first ``count`` messages, then whatever else comes within ``quiet`` seconds."""
        got: list[tuple[Any, Any, bytes]] = []
        deadline = time.monotonic() + WAIT
        settle = None
        for method, properties, body in self.channel.consume(
            self.queue, auto_ack=True, inactivity_timeout=0.05
        ):
            now = time.monotonic()
            if method is not None:
                got.append((method, properties, body))
            if len(got) >= count and settle is None:
                settle = now + quiet
            if now > (settle or deadline):
                break
        self.channel.cancel()
        return got

    def ids(self, count: int, *, quiet: float = 0.3) -> list[str]:
        return [properties.message_id for _, properties, _ in self.get(count, quiet=quiet)]

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> PlainConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()




async def until(predicate: Any) -> None:
    """Poll a state of the code under test (``ready``), which has no event to wait on."""
    with anyio.fail_after(WAIT):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.01)


# -- publishing ---------------------------------------------------------------------------------


@pytest.mark.amqp
def test_event_reaches_a_plain_pika_consumer_with_its_properties(
    broker: AMQPBroker, exchange: str
) -> None:
    with PlainConsumer(exchange, ["shop.order.#"]) as plain:
        before = int(time.time())
        event = send(broker, "shop.order.42.updated", {"total": "12.50"}, type="shop.order.updated")
        [(method, properties, body)] = plain.get(1)
    assert (method.exchange, method.routing_key) == (exchange, "shop.order.42.updated")
    assert body == event.encode()
    assert properties.content_type == "application/json"
    assert properties.message_id == event.id
    assert properties.type == "shop.order.updated"
    assert properties.delivery_mode == 2  # persistent
    assert before <= properties.timestamp <= time.time()
    assert broker.sent == 1


@given(
    source=st.text(min_size=1).filter(lambda s: not any(c in s for c in "\r\n\x00")),
    type_=st.text(min_size=1).filter(lambda s: not any(c in s for c in "\r\n\x00")),
    data=st.recursive(
        st.none() | st.text() | st.integers(), lambda c: st.dictionaries(st.text(), c)
    ),
)
def test_headline_finds_the_id_and_type_of_any_event(source: str, type_: str, data: Any) -> None:
    event = Event.create("a.b", data, type=type_, source=source)
    assert headline(event.encode()) == (event.id, type_)


def test_headline_parses_a_body_our_encoder_did_not_write() -> None:
    assert headline(b'{"data": {"id": "inner"}, "type": "t", "id": "outer"}') == ("outer", "t")
    assert headline(b"[1, 2]") == (None, None)
    assert headline(b"not json") == (None, None)


@pytest.mark.amqp
def test_eight_threads_publishing_at_once_are_batched_and_each_confirmed_once(
    broker: AMQPBroker, exchange: str
) -> None:
    start = threading.Barrier(8)
    sent: list[list[str]] = [[] for _ in range(8)]

    def publish(out: list[str], n: int) -> None:
        start.wait()
        out.extend(send(broker, f"threads.{n}.{i}").id for i in range(250))

    with PlainConsumer(exchange, ["threads.#"]) as plain:
        threads = [threading.Thread(target=publish, args=(out, n)) for n, out in enumerate(sent)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        received = plain.ids(2_000)
    assert len(received) == len(set(received)) == 2_000  # none lost, none duplicated
    assert set(received) == {i for ids in sent for i in ids}
    assert broker.sent == 2_000
    assert broker.batches < broker.sent  # several events went out per I/O-thread wake-up


@pytest.mark.amqp
def test_a_short_lived_process_delivers_its_event_without_calling_close(exchange: str) -> None:
    script = textwrap.dedent(
        f"""
        from brokers.amqp import AMQPBroker
        from signalbus import Event
        broker = AMQPBroker({AMQP_URL!r}, exchange={exchange!r})
        event = Event.create("short.lived.1")
        broker.publish(event.topic, event.encode())
        print(event.id)
        """
    )
    with PlainConsumer(exchange) as plain:
        done = subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=True,
        )
        assert plain.ids(1) == [done.stdout.strip()]


@pytest.mark.amqp
def test_a_forked_child_publishes_on_a_connection_of_its_own(
    broker: AMQPBroker, exchange: str
) -> None:
    with PlainConsumer(exchange) as plain:
        first = send(broker, "fork.parent.1").id
        pid = os.fork()
        if pid == 0:  # the child: publish on the inherited broker object, then leave at once
            code = 1
            try:
                send(broker, "fork.child.1")
                code = 0
            finally:
                os._exit(code)
        assert reap(pid, WAIT) == 0
        last = send(broker, "fork.parent.2").id  # the parent's connection is unharmed
        got = plain.get(3)
    assert [method.routing_key for method, _, _ in got] == [
        "fork.parent.1",
        "fork.child.1",
        "fork.parent.2",
    ]
    assert [props.message_id for _, props, _ in got][::2] == [first, last]


@pytest.mark.amqp
def test_publishes_during_a_cut_are_retried_and_all_arrive(
    exchange: str, proxy: TCPProxy, caplog: pytest.LogCaptureFixture
) -> None:
    broker = AMQPBroker(via(proxy), exchange=exchange, publish_timeout=WAIT)
    confirmed: list[str] = []
    failed: list[Exception] = []

    def publish(n: int) -> None:
        for i in range(300):
            try:
                confirmed.append(send(broker, f"cut.{n}.{i}").id)
            except PublishError as exc:
                failed.append(exc)

    with PlainConsumer(exchange, ["cut.#"]) as plain:
        threads = [threading.Thread(target=publish, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        wait_for(lambda: broker.sent >= 200)
        proxy.cut()  # under load: events queued and unconfirmed are caught in it
        time.sleep(0.5)
        proxy.restore()
        for thread in threads:
            thread.join(WAIT)
        received = plain.ids(1_200)
    broker.close()
    assert failed == []
    assert len(confirmed) == 1_200
    assert set(received) == set(confirmed)  # none vanished (a resent one may come twice)
    assert proxy.accepted >= 2  # it did reconnect
    assert any("no connection to" in r.getMessage() for r in caplog.records)


@pytest.mark.amqp
def test_publish_raises_publish_error_naming_topic_and_reason_when_the_cut_outlasts_it(
    exchange: str, proxy: TCPProxy, caplog: pytest.LogCaptureFixture
) -> None:
    broker = AMQPBroker(via(proxy), exchange=exchange, publish_timeout=0.5)
    with PlainConsumer(exchange, ["late.#"]) as plain:
        before = send(broker, "late.order.1")
        proxy.cut()
        # Known to be gone before the next send: that event is never written anywhere.
        wait_for(lambda: "no connection to" in caplog.text)
        started = time.monotonic()
        with pytest.raises(PublishError) as info:
            send(broker, "late.order.2")
        waited = time.monotonic() - started
        proxy.restore()
        after = wait_for(lambda: _try_send(broker, "late.order.3"))
        delivered = plain.get(2, quiet=0.5)
    broker.close()
    message = str(info.value)
    assert message.startswith(
        f"event on late.order.2 not published to amqp://guest:**@{HOST}:{proxy.port}/ within 0.5 s:"
    )
    assert "reconnecting after" in message
    assert 0.4 < waited < 2.0
    # The event its caller was told had failed is not sent later behind its back. (Retries of
    # late.order.3 that timed out while written may arrive too: their error said so.)
    topics = [method.routing_key for method, _, _ in delivered]
    ids = [properties.message_id for _, properties, _ in delivered]
    assert "late.order.2" not in topics
    assert ids[0] == before.id
    assert ids[-1] == after.id


@pytest.mark.amqp
def test_an_event_written_but_not_confirmed_in_time_is_reported_as_possibly_delivered(
    exchange: str, proxy: TCPProxy
) -> None:
    broker = AMQPBroker(via(proxy), exchange=exchange, publish_timeout=0.5)
    with PlainConsumer(exchange, ["held.#"]) as plain:
        send(broker, "held.1")
        proxy.hold_replies()  # the broker gets the event; its confirm does not come back
        with pytest.raises(PublishError) as info:
            send(broker, "held.2")
        proxy.restore()
        topics = [method.routing_key for method, _, _ in plain.get(2)]
    broker.close()
    assert str(info.value) == (
        f"event on held.2 not confirmed by amqp://guest:**@{HOST}:{proxy.port}/ within 0.5 s: "
        "no confirm from the broker; it may still be delivered"
    )
    assert topics == ["held.1", "held.2"]


@pytest.mark.amqp
@pytest.mark.parametrize(
    "broker_returns", [True, False], ids=["broker-returns", "broker-stays-away"]
)
def test_close_waits_for_a_pending_event_but_no_longer_than_the_publish_timeout(
    exchange: str, proxy: TCPProxy, broker_returns: bool
) -> None:
    broker = AMQPBroker(via(proxy), exchange=exchange, publish_timeout=2.0)
    send(broker, "close.1")
    proxy.cut()
    outcome: list[str] = []

    def publish() -> None:
        try:
            send(broker, "close.2")
            outcome.append("sent")
        except PublishError:
            outcome.append("PublishError")

    pending = threading.Thread(target=publish)
    pending.start()
    time.sleep(0.1)
    if broker_returns:
        threading.Timer(0.2, proxy.restore).start()
    started = time.monotonic()
    broker.close()
    closed_after = time.monotonic() - started
    pending.join(WAIT)
    assert outcome == ["sent" if broker_returns else "PublishError"]
    assert closed_after < 2.0 + 1.0


def _try_send(broker: AMQPBroker, topic: str) -> Event | None:
    try:
        return send(broker, topic)
    except PublishError:
        return None


# -- errors users see ---------------------------------------------------------------------------


async def test_unreachable_broker_is_one_line_with_the_password_masked() -> None:
    port = free_port()
    broker = AMQPBroker(f"amqp://guest:s3cret@{HOST}:{port}/", exchange="unused")
    expected = (
        f"cannot reach broker amqp://guest:**@{HOST}:{port}/ (connection refused); "
        "is RabbitMQ running?"
    )
    with pytest.raises(BrokerUnavailable) as published:
        await anyio.to_thread.run_sync(send, broker, "a.b")
    consumer = broker.consumer(["#"])
    with pytest.raises(BrokerUnavailable) as started:
        await consumer.start()
    assert str(published.value) == str(started.value) == expected
    assert not consumer.ready
    broker.close()


def test_worker_on_an_unreachable_broker_prints_one_line_and_exits_non_zero() -> None:
    port = free_port()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "signalbus",
            "worker",
            "--settings",
            "tests.project.settings",
            "--port",
            str(free_port()),
            "--broker",
            f"amqp://guest:s3cret@{HOST}:{port}/",
        ],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert done.returncode != 0
    assert done.stderr.splitlines() == [
        f"signalbus: error: cannot reach broker amqp://guest:**@{HOST}:{port}/ "
        "(connection refused); is RabbitMQ running?"
    ]


def test_bad_url_is_a_configuration_error_with_the_password_masked() -> None:
    with pytest.raises(ConfigurationError, match=r"guest:\*\*@") as info:
        AMQPBroker("amqp://guest:s3cret@127.0.0.1:99999/")
    assert "s3cret" not in str(info.value)
    with pytest.raises(ConfigurationError, match="Unknown URL parameter: 'colour'"):
        AMQPBroker("amqp://guest:s3cret@127.0.0.1/?colour=red")
    with pytest.raises(ConfigurationError, match=r"bad AMQP exchange name 'amq\.topic'"):
        AMQPBroker("amqp://127.0.0.1/?exchange=amq.topic")


@pytest.mark.amqp
def test_wrong_password_is_a_configuration_error(exchange: str) -> None:
    broker = AMQPBroker("amqp://guest:wrong@127.0.0.1:5672/", exchange=exchange)
    with pytest.raises(ConfigurationError) as info:
        send(broker, "a.b")
    broker.close()
    assert str(info.value) == (
        "broker amqp://guest:**@127.0.0.1:5672/ refused the login (ACCESS_REFUSED); "
        "check the user and password"
    )


@pytest.mark.amqp
def test_an_exchange_of_another_type_is_a_configuration_error(exchange: str) -> None:
    with PlainConsumer(exchange):
        pass  # declares it as a topic exchange; now make it a fanout one
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    connection.channel().exchange_delete(exchange)
    connection.channel().exchange_declare(exchange, "fanout", durable=True)
    connection.close()
    broker = AMQPBroker(AMQP_URL, exchange=exchange)
    with pytest.raises(ConfigurationError, match="PRECONDITION_FAILED - inequivalent arg 'type'"):
        send(broker, "a.b")
    broker.close()


def test_exchange_and_timeout_come_from_the_keyword_the_url_or_the_settings(
    settings: Any,
) -> None:
    settings.SIGNALBUS = {"EXCHANGE": "from-settings", "PUBLISH_TIMEOUT": 2.5}
    assert AMQPBroker(AMQP_URL).exchange == "from-settings"
    assert AMQPBroker(AMQP_URL).publish_timeout == 2.5
    assert AMQPBroker(AMQP_URL + "?exchange=from-url").exchange == "from-url"
    assert AMQPBroker(AMQP_URL + "?exchange=from-url", exchange="kw").exchange == "kw"
    settings.SIGNALBUS = {}
    assert AMQPBroker(AMQP_URL).exchange == "signalbus"
    assert AMQPBroker(AMQP_URL).publish_timeout == 10.0
    settings.SIGNALBUS = {"EXCHANGE": ""}
    with pytest.raises(ConfigurationError, match="bad AMQP exchange name ''"):
        _ = AMQPBroker(AMQP_URL).exchange


# -- the worker's consumer ----------------------------------------------------------------------


@pytest.mark.amqp
async def test_consumer_gets_what_a_plain_publisher_sends_and_its_queue_goes_with_it(
    broker: AMQPBroker, exchange: str
) -> None:
    consumer = broker.consumer(["shop.#"])
    assert not consumer.ready
    async with consuming(consumer) as received:
        assert consumer.ready
        event = Event.create("shop.order.7.created", {"id": 7})
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        connection.channel().basic_publish(exchange, event.topic, event.encode())
        connection.close()
        await received.wait_for(1)
        queue = consumer.queue
    assert not consumer.ready
    assert received.items == [(event.topic, event)]
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="NOT_FOUND"):
        connection.channel().queue_declare(queue, passive=True)  # deleted on a clean stop
    connection.close()


@pytest.mark.amqp
async def test_overlapping_patterns_deliver_each_event_once(broker: AMQPBroker) -> None:
    consumer = broker.consumer(["shop.#", "shop.order.*", "#.created"])
    async with consuming(consumer) as received:
        for topic in ("shop.order.1", "shop.order.1.created", "user.1.created", "other.1"):
            await anyio.to_thread.run_sync(send, broker, topic)
        await anyio.to_thread.run_sync(send, broker, "shop.end")
        await received.wait_for(4)
        await anyio.sleep(0.1)  # room for a duplicate to show up
    assert received.topics == ["shop.order.1", "shop.order.1.created", "user.1.created", "shop.end"]


@pytest.mark.amqp
async def test_a_deliver_that_raises_is_logged_counted_and_acked(
    broker: AMQPBroker, caplog: pytest.LogCaptureFixture
) -> None:
    consumer = broker.consumer(["#"])
    assert isinstance(consumer, AMQPConsumer)
    consumer.prefetch = 1  # the next message comes only once this one is acked
    got: list[str] = []

    def deliver(topic: str, body: bytes) -> None:
        got.append(topic)
        if topic == "bad.1":
            raise RuntimeError("the hub choked")

    await consumer.start()
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run, deliver)
        for topic in ("bad.1", "good.2"):
            await anyio.to_thread.run_sync(send, broker, topic)
        await until(lambda: len(got) == 2)
        tg.cancel_scope.cancel()
    await consumer.aclose()
    assert got == ["bad.1", "good.2"]
    assert consumer.failed == 1
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "bad.1" in record.getMessage()
    assert record.exc_info is not None


@pytest.mark.amqp
async def test_consumer_reconnects_after_a_cut_and_gets_what_follows(
    broker: AMQPBroker, exchange: str, proxy: TCPProxy
) -> None:
    consumer = AMQPBroker(via(proxy), exchange=exchange).consumer(["cut.#"])
    lags: list[float] = []

    async def watch_the_loop() -> None:
        while True:
            started = time.monotonic()
            await anyio.sleep(0.01)
            lags.append(time.monotonic() - started)

    async with consuming(consumer) as received, anyio.create_task_group() as tg:
        tg.start_soon(watch_the_loop)
        await anyio.to_thread.run_sync(send, broker, "cut.before")
        await received.wait_for(1)
        proxy.cut()
        await until(lambda: not consumer.ready)
        await anyio.to_thread.run_sync(send, broker, "cut.during")  # kept in its queue
        await anyio.sleep(0.5)  # reconnects are refused meanwhile
        assert not consumer.ready
        proxy.restore()
        await until(lambda: consumer.ready)
        await anyio.to_thread.run_sync(send, broker, "cut.after")
        await received.wait_until(lambda: "cut.after" in received.topics)
        tg.cancel_scope.cancel()
    # At least once: when the cut also took the ack of "cut.before", it comes again.
    assert list(dict.fromkeys(received.topics)) == ["cut.before", "cut.during", "cut.after"]
    assert len(set(received.ids)) == 3  # a repeat is the same event, not a new one
    assert received.topics.count("cut.before") <= 2
    assert received.topics[-2:] == ["cut.during", "cut.after"]
    # The loop never stalled: a blocking reconnect would hold it for seconds (the bound
    # leaves room for a machine busy with other work).
    assert max(lags) < 1.0


# -- the worker, end to end ----------------------------------------------------------------------


@pytest.mark.amqp
def test_worker_on_amqp_streams_events_and_readyz_follows_the_connection(
    broker: AMQPBroker, exchange: str, proxy: TCPProxy, worker_factory: Any
) -> None:
    worker = worker_factory(broker_url=f"{via(proxy)}?exchange={exchange}").start()
    with SSEReader(f"{worker.url}/events?topic=shop.%23") as reader:
        first = send(broker, "shop.order.1.created")
        assert reader.get().id == first.id
        proxy.cut()
        wait_for(lambda: httpx.get(worker.url + "/readyz").status_code == 503)
        proxy.restore()
        wait_for(lambda: httpx.get(worker.url + "/readyz").status_code == 200)
        second = send(broker, "shop.order.1.updated")
        assert reader.get().id == second.id
    assert worker.stop() == 0


@pytest.mark.amqp
async def test_a_queue_lost_while_disconnected_is_reported_as_a_gap(
    broker: AMQPBroker, exchange: str, proxy: TCPProxy
) -> None:
    consumer = AMQPBroker(via(proxy), exchange=exchange).consumer(["gap.#"])
    gaps: list[bool] = []
    consumer.on_gap = lambda: gaps.append(True)
    async with consuming(consumer) as received:
        await anyio.to_thread.run_sync(send, broker, "gap.before")
        await received.wait_for(1)
        proxy.cut()
        await until(lambda: not consumer.ready)
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        connection.channel().queue_delete(consumer.queue)  # as if it had expired
        connection.close()
        await anyio.to_thread.run_sync(send, broker, "gap.lost")  # routed nowhere
        proxy.restore()
        await until(lambda: consumer.ready and bool(gaps))
        await anyio.to_thread.run_sync(send, broker, "gap.after")
        await received.wait_for(2)
    assert gaps == [True]
    assert received.topics == ["gap.before", "gap.after"]


def _dead_letters_from(queue: str) -> list[tuple[bytes, dict[str, Any]]]:
    """The dead letters one consumer's queue produced (others are put back)."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    found: list[tuple[bytes, dict[str, Any]]] = []
    try:
        channel = connection.channel()
        while True:
            method, props, body = channel.basic_get("signalbus.dead-letters")
            if method is None:
                break
            headers = props.headers or {}
            if headers.get("x-signalbus-queue") == queue:
                found.append((body, headers))
                channel.basic_ack(method.delivery_tag)
        channel.basic_recover(requeue=True)
    finally:
        connection.close()
    return found


@pytest.mark.amqp
async def test_a_message_that_is_not_an_event_is_dead_lettered_with_the_reason(
    broker: AMQPBroker, exchange: str
) -> None:
    from signalbus.errors import InvalidEvent

    consumer = broker.consumer(["bad.#"])
    assert isinstance(consumer, AMQPConsumer)
    got: list[str] = []

    def deliver(topic: str, body: bytes) -> None:
        if not body.startswith(b"{"):
            raise InvalidEvent("not JSON")
        got.append(topic)

    await consumer.start()
    task = asyncio.get_running_loop().create_task(consumer.run(deliver))
    try:
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        channel = connection.channel()
        channel.basic_publish(exchange, "bad.1", b"garbage")
        channel.basic_publish(exchange, "bad.2", Event.create("bad.2").encode())
        connection.close()
        await until(lambda: got == ["bad.2"])
        assert consumer.dead_lettered == 1
    finally:
        task.cancel()
        await consumer.aclose()
    letters = await anyio.to_thread.run_sync(_dead_letters_from, consumer.queue)
    assert [(body, headers["x-signalbus-error"]) for body, headers in letters] == [
        (b"garbage", "not JSON")
    ]


@pytest.mark.amqp
def test_submitted_events_share_round_trips_and_all_arrive(
    broker: AMQPBroker, exchange: str
) -> None:
    with PlainConsumer(exchange, ["bulk.#"]) as plain:
        events = [Event.create(f"bulk.{i}") for i in range(500)]
        for event in events:
            broker.submit(event.topic, event.encode())  # returns before the confirm
        ids = plain.ids(500)
    wait_for(lambda: broker.sent == 500)
    assert ids == [e.id for e in events]
    # Confirms were not waited for one by one: the I/O thread sent them in batches.
    assert broker.batches < 100


@pytest.mark.amqp
def test_a_submitted_event_that_cannot_be_sent_is_logged_with_its_id(
    exchange: str, proxy: TCPProxy, caplog: pytest.LogCaptureFixture
) -> None:
    broker = AMQPBroker(via(proxy), exchange=exchange, publish_timeout=0.5)
    try:
        send(broker, "doomed.warmup")  # connected once
        proxy.cut()
        event = Event.create("doomed.1")
        with caplog.at_level(logging.ERROR, logger="signalbus.brokers.amqp"):
            broker.submit(event.topic, event.encode())
            wait_for(lambda: any(event.id in r.getMessage() for r in caplog.records), timeout=15)
        (record,) = [r for r in caplog.records if event.id in r.getMessage()]
        assert "doomed.1 not published" in record.getMessage()
    finally:
        proxy.restore()
        broker.close()
