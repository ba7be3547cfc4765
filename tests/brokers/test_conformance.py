"""One contract, every transport: what the worker and the publishers rely on.

The parametrization is a list of URL factories; a transport joins the suite with one
``pytest.param`` line in `TRANSPORTS`. The 0MQ-specific behaviours (short-lived
publishers, drops made loud, worker restarts) follow the shared suite.

In one process libzmq handles a bound socket's connections only while that socket is
polled, so every test runs the consumer as a task on the event loop and publishes from
a worker thread (``anyio.to_thread``), as a Django process would.
"""

from __future__ import annotations

import logging
import os
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import anyio
import pytest

from brokers.base import Broker
from brokers.registry import open_broker
from brokers.zeromq import ZeroMQBroker
from signalbus import BrokerUnavailable, Event
from tests.helpers import HOST, ROOT, consuming, free_port, reap, send
from tests.rabbitmq import amqp_url

pytestmark = pytest.mark.anyio

WAIT = 10.0  # seconds: a generous bound for anything that should take milliseconds
CONNECT_TIMEOUT = 5.0


def memory_url() -> str:
    return f"memory://conformance-{uuid.uuid4().hex}"


def zmq_url() -> str:
    return f"zmq://{HOST}:{free_port()}"


TRANSPORTS = [
    pytest.param(memory_url, id="memory"),
    pytest.param(zmq_url, id="zmq"),
    pytest.param(amqp_url, id="amqp", marks=pytest.mark.amqp),
]


@pytest.fixture(params=TRANSPORTS)
def url(request: pytest.FixtureRequest) -> str:
    make_url: Callable[[], str] = request.param
    return make_url()


@pytest.fixture
def broker(url: str) -> Iterator[Broker]:
    broker = open_broker(url)
    if hasattr(broker, "connect_timeout"):
        broker.connect_timeout = CONNECT_TIMEOUT
    yield broker
    broker.close()




# -- every transport ----------------------------------------------------------------------


async def test_consumer_receives_what_another_thread_publishes(broker: Broker) -> None:
    async with consuming(broker.consumer(["#"])) as received:
        event = await anyio.to_thread.run_sync(send, broker, "shop.order.42.updated", {"a": 1})
        await received.wait_for(1)
    assert received.items == [("shop.order.42.updated", event)]


async def test_consumer_receives_only_topics_matching_its_patterns(broker: Broker) -> None:
    topics = [
        "shop.order.1",  # yes
        "shop.order.1.updated",  # no: * is one word
        "shop.orderly.1",  # no: a literal prefix is not a word
        "shop.order",  # no: * is exactly one word
        "billing",  # yes: # may be no word
        "billing.invoice.7.paid",  # yes
        "user.1",  # no
        "billing.done",  # yes: the last one
    ]

    def publish_all() -> None:
        for topic in topics:
            send(broker, topic)

    async with consuming(broker.consumer(["shop.order.*", "billing.#"])) as received:
        await anyio.to_thread.run_sync(publish_all)
        await received.wait_for_topic("billing.done")
        await anyio.sleep(0.05)  # room for a wrongly delivered straggler to show up
    assert received.topics == ["shop.order.1", "billing", "billing.invoice.7.paid", "billing.done"]


async def test_many_events_arrive_in_order(broker: Broker) -> None:
    def publish_all() -> list[str]:
        return [send(broker, f"load.{i}", {"i": i}).id for i in range(1_000)]

    async with consuming(broker.consumer(["load.*"])) as received:
        sent = await anyio.to_thread.run_sync(publish_all)
        await received.wait_for(len(sent))
    assert received.ids == sent
    assert [event.data["i"] for _, event in received.items] == list(range(1_000))


async def test_publish_is_safe_from_several_threads(broker: Broker) -> None:
    sent: list[list[str]] = [[] for _ in range(4)]

    def publish_some(out: list[str], n: int) -> None:
        out.extend(send(broker, f"thread.{n}.{i}").id for i in range(100))

    def publish_from_threads() -> None:
        threads = [
            threading.Thread(target=publish_some, args=(out, n)) for n, out in enumerate(sent)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    async with consuming(broker.consumer(["thread.#"])) as received:
        await anyio.to_thread.run_sync(publish_from_threads)
        await received.wait_for(400)
    assert sorted(received.ids) == sorted(i for ids in sent for i in ids)
    for ids in sent:  # each thread's own events keep their order
        assert [i for i in received.ids if i in set(ids)] == ids


async def test_consumer_is_ready_once_started_and_not_after_close(broker: Broker) -> None:
    consumer = broker.consumer(["#"])
    assert not consumer.ready
    await consumer.start()
    assert consumer.ready
    await consumer.aclose()
    assert not consumer.ready
    await consumer.aclose()  # safe twice


# -- 0MQ ----------------------------------------------------------------------------------

SHORT_LIVED_PUBLISHER = textwrap.dedent(
    """
    import sys
    from brokers.zeromq import ZeroMQBroker
    from signalbus import Event

    broker = ZeroMQBroker(sys.argv[1], connect_timeout=float(sys.argv[2]))
    event = Event.create("short.lived.1", {"pid": 1})
    broker.publish(event.topic, event.encode())
    print(event.id, broker.sent, broker.dropped)
    """
)


@pytest.fixture
def zmq_broker() -> Iterator[ZeroMQBroker]:
    broker = ZeroMQBroker(zmq_url(), connect_timeout=CONNECT_TIMEOUT)
    yield broker
    broker.close()


async def test_short_lived_publisher_process_delivers_its_event(zmq_broker: ZeroMQBroker) -> None:
    async with consuming(zmq_broker.consumer(["short.#"])) as received:
        done = await anyio.run_process(
            [sys.executable, "-c", SHORT_LIVED_PUBLISHER, zmq_broker.url, str(CONNECT_TIMEOUT)],
            cwd=ROOT,
        )
        await received.wait_for(1)
    event_id, sent, dropped = done.stdout.decode().split()
    assert (sent, dropped) == ("1", "0")
    assert received.ids == [event_id]
    assert received.topics == ["short.lived.1"]


def _fork_and_send(broker: ZeroMQBroker, topic: str) -> int:
    """Fork; the child publishes on the inherited broker object and leaves (closing it, as
    its exit would). The child's exit code."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            send(broker, topic)
            broker.close()
            code = 0
        finally:
            os._exit(code)
    return reap(pid, WAIT)


async def test_a_forked_child_publishes_on_a_socket_of_its_own(zmq_broker: ZeroMQBroker) -> None:
    """A pre-forking server: the child must not touch the parent's 0MQ socket (one socket
    in two processes corrupts it), and the parent's socket is unharmed after."""
    async with consuming(zmq_broker.consumer(["fork.#"])) as received:
        await anyio.to_thread.run_sync(send, zmq_broker, "fork.parent.1")
        code = await anyio.to_thread.run_sync(_fork_and_send, zmq_broker, "fork.child.1")
        assert code == 0
        await anyio.to_thread.run_sync(send, zmq_broker, "fork.parent.2")
        await received.wait_for(3)
    assert sorted(received.topics) == ["fork.child.1", "fork.parent.1", "fork.parent.2"]
    assert zmq_broker.sent == 2


def _send_raw(endpoint: str, messages: list[list[bytes]]) -> None:
    """Send ``messages`` as they are, from a bare XPUB, once the consumer has subscribed."""
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.XPUB)
    try:
        sock.connect(endpoint)
        assert sock.poll(int(WAIT * 1000)), "the consumer never subscribed"
        sock.recv()
        for message in messages:
            sock.send_multipart(message)
    finally:
        sock.close(linger=int(WAIT * 1000))
        context.term()


async def test_malformed_0mq_messages_are_counted_and_logged_and_the_next_one_delivered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = ZeroMQBroker(zmq_url())
    caplog.set_level(logging.WARNING)
    good = Event.create("raw.good.1")
    messages = [
        [b"raw.bad.1"],
        [b"raw.bad.2", b"{}", b"extra"],
        ["raw.caf\u00e9".encode(), good.encode()],
        [b"raw.bad.4", b"not json"],
        [b"raw.good.1", good.encode()],
    ]
    consumer = broker.consumer(["raw.#"])
    async with consuming(consumer) as received:
        await anyio.to_thread.run_sync(_send_raw, broker.endpoint, messages)
        await received.wait_for(1)
    assert received.ids == [good.id]
    assert consumer.malformed == 4  # type: ignore[attr-defined]
    logged = [r.getMessage() for r in caplog.records]
    assert any("1 frames ignored" in m for m in logged), logged
    assert any("3 frames ignored" in m for m in logged), logged
    assert any("non-ASCII topic" in m for m in logged), logged
    assert any("raw.bad.4 ignored: not JSON" in m for m in logged), logged


def test_the_0mq_flags_written_as_ints_are_libzmq_s() -> None:
    import zmq

    from brokers import zeromq

    assert (zeromq._EVENTS, zeromq._POLLIN) == (zmq.EVENTS, zmq.POLLIN)
    assert (zeromq._NOBLOCK, zeromq._SNDMORE, zeromq._RCVMORE) == (
        zmq.NOBLOCK,
        zmq.SNDMORE,
        zmq.RCVMORE,
    )


def test_publish_with_no_worker_logs_the_drop_and_counts_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = zmq_url()
    broker = ZeroMQBroker(url, connect_timeout=0.3)
    caplog.set_level(logging.WARNING, logger="signalbus.brokers.zeromq")
    try:
        started = time.monotonic()
        send(broker, "lonely.order.42")
        waited = time.monotonic() - started
        assert 0.25 <= waited < 2.0  # it waited for a worker, about connect_timeout
        assert broker.dropped == 1
        assert broker.sent == 0
        started = time.monotonic()
        send(broker, "lonely.order.43")
        assert time.monotonic() - started < 0.25  # the wait is only for the first event
        assert broker.dropped == 2
    finally:
        broker.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "lonely.order.42" in warnings[0].getMessage()
    assert url in warnings[0].getMessage()
    assert "dropped" in warnings[0].getMessage()
    assert "lonely.order.43" in warnings[1].getMessage()


async def test_a_burst_reads_the_subscriptions_about_once_a_millisecond(
    zmq_broker: ZeroMQBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = 0
    read = zmq_broker._read_subscriptions

    def counted(sock: object, timeout_ms: int) -> None:
        nonlocal reads
        reads += 1
        read(sock, timeout_ms)  # type: ignore[arg-type]

    monkeypatch.setattr(zmq_broker, "_read_subscriptions", counted)
    body = Event.create("burst.order.1").encode()
    async with consuming(zmq_broker.consumer(["burst.#"])) as received:
        await anyio.to_thread.run_sync(send, zmq_broker, "burst.order.0")  # waits for the worker
        reads = 0
        started = time.monotonic()
        for _ in range(2_000):
            zmq_broker.publish("burst.order.1", body)
        elapsed = time.monotonic() - started
        await received.wait_for(2_001)
    assert zmq_broker.dropped == 0
    assert 1 <= reads <= elapsed / 0.001 + 2


async def test_second_consumer_on_the_same_address_is_told_it_is_in_use(
    zmq_broker: ZeroMQBroker,
) -> None:
    first = zmq_broker.consumer(["#"])
    await first.start()
    second = zmq_broker.consumer(["#"])
    try:
        with pytest.raises(BrokerUnavailable, match="address in use") as info:
            await second.start()
        assert zmq_broker.url in str(info.value)
        assert not second.ready
    finally:
        await second.aclose()
        await first.aclose()


async def test_events_sent_while_the_worker_restarts_reach_the_new_worker(
    zmq_broker: ZeroMQBroker,
) -> None:
    async with consuming(zmq_broker.consumer(["#"])) as before:
        first = await anyio.to_thread.run_sync(send, zmq_broker, "restart.before")
        await before.wait_for(1)
    assert before.ids == [first.id]

    # No worker for a while, then a new one at the same address; the publisher is not
    # restarted. A stopped worker does not unsubscribe: the publisher's side of the
    # connection outlives it, and what it sends meanwhile waits for the next worker.
    during = [
        await anyio.to_thread.run_sync(send, zmq_broker, f"restart.during.{n}") for n in range(3)
    ]
    async with consuming(zmq_broker.consumer(["#"])) as after:
        with anyio.fail_after(WAIT):
            await after.wait_for(3)
    assert after.ids == [event.id for event in during]
    assert (zmq_broker.sent, zmq_broker.dropped) == (4, 0)


async def test_a_worker_gone_is_logged_what_waits_for_it_counted_and_its_loss_told(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="signalbus.brokers.zeromq")
    broker = ZeroMQBroker(zmq_url(), connect_timeout=CONNECT_TIMEOUT)

    async def send_until(done: Callable[[], bool], topic: str) -> None:
        with anyio.fail_after(WAIT):  # until the socket's monitor has told the publisher
            while not done():
                await anyio.to_thread.run_sync(send, broker, topic)
                await anyio.sleep(0.01)

    try:
        async with consuming(broker.consumer(["#"])) as worker:
            await anyio.to_thread.run_sync(send, broker, "gone.before")
            await worker.wait_for(1)
        await send_until(lambda: broker.waiting > 0, "gone.during")
        waited = broker.waiting
        async with consuming(broker.consumer(["#"])) as back:
            await back.wait_for(waited)  # what waited goes to the next worker
            await send_until(lambda: broker.waiting == 0, "gone.back")
        await send_until(lambda: broker.waiting >= 3, "gone.again")
        lost = broker.waiting
    finally:
        started = time.monotonic()
        await anyio.to_thread.run_sync(broker.close)
    assert time.monotonic() - started < 4  # the linger, not a hang
    assert broker.dropped == 0
    logged = [(r.levelname, r.getMessage()) for r in caplog.records]
    went_away = (
        f"0MQ worker at {broker.url} went away: events wait in this process for the next"
        " worker there, and are lost if this process exits first"
    )
    assert ("WARNING", went_away) in logged
    (back_again,) = [m for level, m in logged if level == "INFO" and " is back: " in m]
    assert int(back_again.split(": ")[1].split()[0]) >= waited
    (error,) = [m for level, m in logged if level == "ERROR"]
    assert error.startswith(f"{lost} 0MQ event(s) sent while the worker at {broker.url} was away")
