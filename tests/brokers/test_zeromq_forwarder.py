"""The 0MQ forwarder of ``--workers N``: publishers on the broker address, consumers behind it."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

from brokers.zeromq import ZeroMQBroker
from brokers.zeromq_forwarder import ZeroMQForwarder
from signalbus import BrokerUnavailable
from tests.helpers import HOST, Received, free_port, send

pytestmark = pytest.mark.anyio


@pytest.fixture
def forwarder() -> Iterator[ZeroMQForwarder]:
    forwarder = ZeroMQForwarder(f"zmq://{HOST}:{free_port()}")
    forwarder.start()
    yield forwarder
    forwarder.close()


async def test_every_consumer_behind_the_forwarder_gets_each_event_once(forwarder):
    behind = ZeroMQBroker(forwarder.url, forwarder=forwarder.endpoint)
    consumers = [behind.consumer(["shop.#"]) for _ in range(2)]
    publisher = ZeroMQBroker(forwarder.url, connect_timeout=5)
    received = [Received(), Received()]
    try:
        async with anyio.create_task_group() as tg:
            for consumer, into in zip(consumers, received, strict=True):
                await consumer.start()
                tg.start_soon(consumer.run, into.deliver)
            # The publisher's first send waits for a subscription, which came up through the
            # proxy; probes until the second consumer's subscription has come up too.
            with anyio.fail_after(10):
                while not all(into.items for into in received):
                    await anyio.to_thread.run_sync(send, publisher, "shop.probe")
                    await anyio.sleep(0.05)
            event = await anyio.to_thread.run_sync(send, publisher, "shop.order.1.created")
            for into in received:
                await into.wait_for_topic("shop.order.1.created")
            await anyio.sleep(0.2)
            tg.cancel_scope.cancel()
    finally:
        publisher.close()
        for consumer in consumers:
            await consumer.aclose()
    for into in received:
        assert [e.id for t, e in into.items if t != "shop.probe"] == [event.id]
    assert publisher.dropped == 0


def test_a_taken_broker_address_is_one_line(forwarder):
    second = ZeroMQForwarder(forwarder.url)
    with pytest.raises(BrokerUnavailable, match=r"^cannot bind zmq://.*: address in use"):
        second.start()


def test_close_releases_the_address_for_the_next_supervisor(forwarder):
    forwarder.close()
    again = ZeroMQForwarder(forwarder.url)
    again.start()
    again.close()
