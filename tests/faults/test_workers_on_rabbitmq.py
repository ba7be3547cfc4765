"""Workers on a real RabbitMQ: several side by side, bad messages, and a broker restart."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pika
import pytest

from brokers.amqp import AMQPBroker
from signalbus import PublishError
from tests.helpers import SSEReader, metric, send, wait_for
from tests.rabbitmq import AMQP_URL

pytestmark = pytest.mark.amqp


@pytest.fixture
def broker(exchange: str) -> Iterator[AMQPBroker]:
    broker = AMQPBroker(AMQP_URL, exchange=exchange, publish_timeout=60)
    yield broker
    broker.close()



def test_two_workers_each_deliver_every_event_to_their_own_clients(
    broker: AMQPBroker, exchange: str, worker_factory: Any
) -> None:
    url = f"{AMQP_URL}?exchange={exchange}"
    workers = [worker_factory(broker_url=url).start() for _ in range(2)]
    readers = [SSEReader(f"{w.url}/events?topic=shop.%23") for w in workers for _ in range(2)]
    sent = [send(broker, f"shop.order.{i}.created").id for i in range(30)]
    try:
        for reader in readers:
            assert [e.id for e in reader.take(30)] == sent
            reader.assert_quiet(0.2)
    finally:
        for reader in readers:
            reader.close()
    assert [w.stop() for w in workers] == [0, 0]


def test_a_bad_message_is_dead_lettered_counted_and_the_worker_goes_on(
    broker: AMQPBroker, exchange: str, worker_factory: Any
) -> None:
    worker = worker_factory(broker_url=f"{AMQP_URL}?exchange={exchange}").start()
    with SSEReader(f"{worker.url}/events?topic=shop.%23") as reader:
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        channel = connection.channel()
        channel.basic_publish(exchange, "shop.bad.1", b"<html>not an event</html>")
        channel.basic_publish(exchange, "shop.bad.2", b'{"specversion": "1.0"}')
        channel.basic_publish(exchange, "shop.bad.3", b"{" + b" " * (1 << 20) + b"}")
        connection.close()
        good = send(broker, "shop.good.1")
        assert reader.get().id == good.id
        reader.assert_quiet(0.2)
    assert metric(worker, "signalbus_bad_messages_total") == 3
    assert "dead-lettered" in worker.log()
    assert "over MAX_MESSAGE_BYTES" in worker.log()
    assert worker.stop() == 0


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


def broker_answers() -> bool:
    try:
        pika.BlockingConnection(pika.URLParameters(AMQP_URL + "?socket_timeout=1")).close()
    except Exception:
        return False
    return True


def test_rabbitmq_restart_loses_nothing_and_streams_stay_open(
    broker: AMQPBroker, exchange: str, worker_factory: Any
) -> None:
    worker = worker_factory(broker_url=f"{AMQP_URL}?exchange={exchange}").start()
    sent: list[str] = []
    failed: list[str] = []

    def publish_through_the_outage() -> None:
        for i in range(40):
            try:
                sent.append(send(broker, f"shop.restart.{i}").id)
            except PublishError as exc:
                failed.append(str(exc))
            time.sleep(0.1)

    with SSEReader(f"{worker.url}/events?topic=shop.%23") as reader:
        first = send(broker, "shop.restart.first")
        assert reader.get().id == first.id
        publisher = threading.Thread(target=publish_through_the_outage)
        try:
            rabbitmqctl("stop_app")
            publisher.start()
            wait_for(lambda: httpx.get(worker.url + "/readyz").status_code == 503, timeout=20)
            time.sleep(1)
        finally:
            rabbitmqctl("start_app")
            wait_for(broker_answers, timeout=60)
        publisher.join(120)
        wait_for(lambda: httpx.get(worker.url + "/readyz").status_code == 200, timeout=30)
        received = [e.id for e in reader.take(len(sent), timeout=60)]
        assert not reader.ended.is_set()  # the stream stayed open through the outage
    assert failed == []  # every publish during the outage was retried until confirmed
    assert sorted(received) == sorted(sent)  # none lost, none twice
    assert worker.stop() == 0
