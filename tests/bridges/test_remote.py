"""``@signalbus.subscriber`` functions run by the worker (`bridges.remote`).

On a real RabbitMQ (tests marked ``amqp``), each test with an exchange of its own:
the subscriber queues are named after it, so tests and runs never share one, and
every queue and exchange a test declares is deleted after it. ``signalbus.dlx`` and
``signalbus.dead-letters`` are shared by design: a test takes out only its own
dead letter, found by the event's id. Worker processes record what their
subscribers handled in a file per process (`tests.bridges.remote_subscribers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pika
import pytest

from bridges.remote import SubscribersConsumer, describe_error, retry_delay, subscribers_consumer
from brokers.amqp import AMQPBroker
from brokers.memory import MemoryBroker
from signalbus import Event
from signalbus.conf import Settings
from signalbus.subscribers import Subscriber
from tests.faults.proxy import TCPProxy
from tests.helpers import HOST, ROOT, SSEReader, WorkerProcess, child_env, send, wait_for
from tests.project.shop.models import Order
from tests.rabbitmq import AMQP_URL, delete_exchanges, unique_exchange

WAIT = 10.0  # a generous bound for what should take milliseconds
READY = "subscribers only (no HTTP)"  # the worker's log line once it consumes
# Every subscriber name used here: their queues are deleted after each test.
NAMES = ("work", "slow", "fail", "orders", "refuse", "cut")


class PaymentDeclined(Exception):
    """An exception of the project's own: its module is part of the reason."""


# -- RabbitMQ -----------------------------------------------------------------------------------


@pytest.fixture
def exchange() -> Iterator[str]:
    name = unique_exchange()
    yield name
    with amqp_channel() as channel:
        for subscriber in NAMES:
            channel.queue_delete(f"{name}.sub.{subscriber}")
            channel.queue_delete(f"{name}.sub.{subscriber}.retry")
    delete_exchanges(name)


@contextlib.contextmanager
def amqp_channel() -> Iterator[Any]:
    """A plain pika channel, for what the test checks behind the code's back."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        yield connection.channel()
    finally:
        connection.close()


def depth(queue: str) -> int:
    """Messages ready in ``queue``: zero once every delivery was acked."""
    with amqp_channel() as channel:
        return int(channel.queue_declare(queue, passive=True).method.message_count)


def take_dead_letter(event_id: str) -> tuple[Any, Any, bytes]:
    """Our dead letter, out of the shared ``signalbus.dead-letters``; every other one stays."""
    with amqp_channel() as channel:
        found = None
        while found is None:
            method, properties, body = channel.basic_get("signalbus.dead-letters")
            if method is None:
                break
            if properties.message_id == event_id:
                channel.basic_ack(method.delivery_tag)
                found = (method, properties, body)
        channel.basic_nack(0, multiple=True, requeue=True)
    assert found is not None, f"no dead letter for {event_id}"
    return found


# -- the worker's consumer, in this process -----------------------------------------------------


class Running:
    """A consumer started and run on an event loop in a thread of its own, as the worker
    runs it, so that the test (and the ORM in it) stays synchronous."""

    def __init__(self, consumer: SubscribersConsumer) -> None:
        self.consumer = consumer
        self.hub: list[str] = []  # topics the worker's hub would have received
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            await self.consumer.start()
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self._started.set()
        task = asyncio.create_task(self.consumer.run(lambda topic, _body: self.hub.append(topic)))
        await self._stop.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await self.consumer.aclose()

    def __enter__(self) -> Running:
        self._thread.start()
        assert self._started.wait(WAIT)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(WAIT)
        assert not self._thread.is_alive()


def amqp_consumer(
    exchange: str, *subscribers: Subscriber, url: str = AMQP_URL
) -> SubscribersConsumer:
    broker = AMQPBroker(url, exchange=exchange)
    return subscribers_consumer(
        broker, subscribers, hub_patterns=(), settings=Settings(subscriber_threads=2)
    )


@pytest.fixture
def broker(exchange: str) -> Iterator[AMQPBroker]:
    broker = AMQPBroker(AMQP_URL, exchange=exchange, publish_timeout=5)
    yield broker
    broker.close()


@pytest.mark.amqp
@pytest.mark.django_db(transaction=True)
def test_a_subscriber_gets_the_event_in_a_pool_thread_and_can_use_the_orm(
    exchange: str, broker: AMQPBroker
) -> None:
    calls: list[tuple[Event, str]] = []

    def mark_paid(event: Event) -> None:
        Order.objects.filter(pk=event.data["id"]).update(status="paid")
        calls.append((event, threading.current_thread().name))

    order = Order.objects.create(status="new")
    consumer = amqp_consumer(exchange, Subscriber("orders", "shop.order.*.paid", mark_paid))
    with Running(consumer):
        send(broker, f"shop.order.{order.pk}.shipped")  # not the subscriber's pattern
        event = send(broker, f"shop.order.{order.pk}.paid", {"id": order.pk})
        wait_for(lambda: consumer.runner.stats.handled == 1, WAIT)
    [(got, thread)] = calls
    assert got == event
    assert thread.startswith("signalbus-subscriber-")
    order.refresh_from_db()
    assert order.status == "paid"
    assert depth(f"{exchange}.sub.orders") == 0  # acked


@pytest.mark.amqp
def test_a_raising_subscriber_is_retried_with_backoff_then_dead_lettered_with_the_reason(
    exchange: str, broker: AMQPBroker, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[float] = []

    def refuse(event: Event) -> None:
        calls.append(time.monotonic())
        raise PaymentDeclined(f"card declined for {event.id}")

    consumer = amqp_consumer(exchange, Subscriber("refuse", "pay.#", refuse, retries=2))
    with caplog.at_level(logging.WARNING, logger="signalbus.subscribers"), Running(consumer):
        event = send(broker, "pay.invoice.7")
        wait_for(lambda: consumer.runner.stats.dead_lettered == 1, WAIT)
    method, properties, body = take_dead_letter(event.id)

    assert len(calls) == 3
    first, second = calls[1] - calls[0], calls[2] - calls[1]
    assert 1.0 <= first < 2.5  # 1 s, then 2 s: the waits are RabbitMQ's TTLs
    assert 2.0 <= second < 3.5
    reason = f"tests.bridges.test_remote.PaymentDeclined: card declined for {event.id}"
    logged = [r.getMessage() for r in caplog.records if r.name == "signalbus.subscribers"]
    assert [line.split(f"{event.id} (pay.invoice.7), ")[1] for line in logged] == [
        f"attempt 1 of 3: {reason}; retrying in 1 s",
        f"attempt 2 of 3: {reason}; retrying in 2 s",
        f"attempt 3 of 3: {reason}; dead-lettered",
    ]
    assert all(line.startswith("subscriber refuse failed on event") for line in logged)
    assert (method.exchange, method.routing_key) == ("signalbus.dlx", event.topic)
    assert body == event.encode()
    assert properties.message_id == event.id
    assert properties.headers["x-signalbus-error"] == reason
    assert properties.headers["x-signalbus-subscriber"] == "refuse"
    assert properties.headers["x-signalbus-attempts"] == 3
    assert depth(f"{exchange}.sub.refuse") == depth(f"{exchange}.sub.refuse.retry") == 0


@pytest.mark.amqp
def test_a_message_that_is_not_an_event_is_dead_lettered_at_once_without_a_call(
    exchange: str,
) -> None:
    calls: list[Event] = []
    consumer = amqp_consumer(exchange, Subscriber("refuse", "pay.#", calls.append, retries=5))
    with Running(consumer), amqp_channel() as channel:
        properties = pika.BasicProperties(message_id="not-an-event-" + exchange)
        channel.basic_publish(exchange, "pay.junk", b"<html>", properties)
        wait_for(lambda: consumer.runner.stats.dead_lettered == 1, WAIT)
    _, dead, body = take_dead_letter("not-an-event-" + exchange)
    assert calls == []
    assert body == b"<html>"
    assert dead.headers["x-signalbus-error"].startswith("InvalidEvent: not JSON")
    assert dead.headers["x-signalbus-attempts"] == 1


@pytest.mark.amqp
def test_an_event_published_while_the_connection_is_cut_waits_in_the_queue(
    exchange: str, broker: AMQPBroker
) -> None:
    got: list[str] = []
    subscriber = Subscriber("cut", "cut.#", lambda event: got.append(event.topic))
    with TCPProxy((HOST, 5672)) as proxy:
        consumer = amqp_consumer(
            exchange, subscriber, url=f"amqp://guest:guest@{HOST}:{proxy.port}/"
        )
        with Running(consumer):
            send(broker, "cut.before")
            wait_for(lambda: got == ["cut.before"], WAIT)
            proxy.cut()
            wait_for(lambda: not consumer.ready, WAIT)
            send(broker, "cut.during")  # no worker connected: the durable queue keeps it
            proxy.restore()
            wait_for(lambda: consumer.ready, WAIT)
            send(broker, "cut.after")
            wait_for(lambda: "cut.after" in got, WAIT)
    # At least once: an ack lost in the cut gives "cut.before" a second time.
    assert list(dict.fromkeys(got)) == ["cut.before", "cut.during", "cut.after"]


# -- worker processes ---------------------------------------------------------------------------


class SubscriberWorker(WorkerProcess):
    """``python -m signalbus worker --no-http`` running `tests.bridges.remote_subscribers`."""

    def __init__(self, tmp: Path, broker_url: str, records: Path) -> None:
        super().__init__(
            tmp, broker_url=broker_url, env={"SIGNALBUS_TEST_RECORD_DIR": str(records)}
        )

    def command(self) -> list[str]:
        return [
            *(sys.executable, "-m", "signalbus", "worker", "--no-http"),
            *("--settings", "tests.bridges.remote_settings", "--broker", self.broker_url),
        ]

    def ready(self) -> bool:
        return READY in self.log()


@pytest.fixture
def records(tmp_path: Path) -> Path:
    path = tmp_path / "records"
    path.mkdir()
    return path


@pytest.fixture
def start_workers(tmp_path: Path, records: Path, exchange: str) -> Iterator[Any]:
    started: list[SubscriberWorker] = []

    def start(count: int) -> list[SubscriberWorker]:
        url = f"{AMQP_URL}?exchange={exchange}"
        new = [SubscriberWorker(tmp_path, url, records) for _ in range(count)]
        workers = [worker.start(wait=False) for worker in new]
        started.extend(workers)
        return [worker.wait_ready() for worker in workers]

    yield start
    for worker in started:
        if worker.proc is not None and worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait()


def handled(records: Path, what: str) -> dict[int, list[str]]:
    """Event ids each worker process recorded for ``what``, by process id."""
    found: dict[int, list[str]] = {}
    for path in records.glob("*.log"):
        lines = [line.split() for line in path.read_text().splitlines()]
        found[int(path.stem)] = [event_id for kind, event_id, _ in lines if kind == what]
    return found


def listening_ports(pid: int) -> list[int]:
    """The TCP ports ``pid`` listens on, from /proc: its socket inodes in LISTEN state."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed since the listing
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


@pytest.mark.amqp
def test_two_workers_share_a_subscriber_queue_each_event_handled_once(
    broker: AMQPBroker, records: Path, start_workers: Any, exchange: str
) -> None:
    workers = start_workers(2)
    sent = [send(broker, f"work.{i}").id for i in range(60)]
    wait_for(lambda: sum(map(len, handled(records, "work").values())) >= 60, WAIT)
    time.sleep(0.3)  # room for a duplicate to show up
    by_worker = handled(records, "work")
    assert sorted(i for ids in by_worker.values() for i in ids) == sorted(sent)
    assert sorted(by_worker) == sorted(w.proc.pid for w in workers)
    assert all(by_worker.values())  # both took a share
    assert [w.stop() for w in workers] == [0, 0]
    assert depth(f"{exchange}.sub.work") == 0


@pytest.mark.amqp
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_no_http_worker_binds_no_port_and_exits_0_once_the_call_under_way_is_done(
    broker: AMQPBroker, records: Path, start_workers: Any, exchange: str, sig: int
) -> None:
    [worker] = start_workers(1)
    assert listening_ports(worker.proc.pid) == []
    event = send(broker, "slow.1")
    wait_for(lambda: handled(records, "slow-start").get(worker.proc.pid), WAIT)
    stopped = time.monotonic()
    assert worker.stop(sig) == 0
    assert time.monotonic() - stopped < 5
    assert handled(records, "slow-end") == {worker.proc.pid: [event.id]}
    assert depth(f"{exchange}.sub.slow") == 0  # acked before the exit, not given back


@pytest.mark.amqp
def test_a_worker_process_dead_letters_after_its_retries(
    broker: AMQPBroker, records: Path, start_workers: Any
) -> None:
    [worker] = start_workers(1)
    event = send(broker, "fail.1")
    wait_for(lambda: "dead-lettered" in worker.log(), WAIT)
    assert worker.stop() == 0
    _, properties, _ = take_dead_letter(event.id)
    assert properties.headers["x-signalbus-attempts"] == 2  # retries=1
    assert properties.headers["x-signalbus-error"] == f"ValueError: cannot handle {event.id}"
    assert handled(records, "fail") == {worker.proc.pid: [event.id, event.id]}


@pytest.mark.amqp
def test_a_worker_serving_http_runs_the_subscribers_too(
    broker: AMQPBroker, records: Path, exchange: str, worker_factory: Any
) -> None:
    worker = worker_factory(
        broker_url=f"{AMQP_URL}?exchange={exchange}",
        env={"SIGNALBUS_TEST_RECORD_DIR": str(records)},
        args=("--settings", "tests.bridges.remote_settings"),
    ).start()
    assert listening_ports(worker.proc.pid) == [worker.port]
    with SSEReader(f"{worker.url}/events?topic=work.%23") as reader:
        event = send(broker, "work.streamed")
        assert reader.get().id == event.id
    wait_for(lambda: handled(records, "work").get(worker.proc.pid), WAIT)
    assert handled(records, "work") == {worker.proc.pid: [event.id]}
    assert httpx.get(worker.url + "/readyz").status_code == 200
    assert worker.stop() == 0


def test_no_http_with_no_subscriber_is_one_line_and_non_zero() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "signalbus", "worker", "--no-http"],
        cwd=ROOT,
        env=child_env(DJANGO_SETTINGS_MODULE="tests.project.settings"),
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "signalbus: error: --no-http runs @signalbus.subscriber functions and none is"
        " registered; put them in an installed app's subscribers.py or list them in"
        " SIGNALBUS['SUBSCRIBERS']"
    ]


# -- transports that keep nothing: in-process, at most once --------------------------------------


def test_on_memory_subscribers_run_from_the_worker_stream_at_most_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    got: list[str] = []

    def fail(event: Event) -> None:
        raise RuntimeError("no")

    broker = MemoryBroker(f"memory://remote-{time.monotonic_ns()}")
    subscribers = [
        Subscriber("got", "a.#", lambda event: got.append(event.topic)),
        Subscriber("fail", "b.#", fail, retries=0),
    ]
    consumer = subscribers_consumer(
        broker, subscribers, hub_patterns=("hub.#",), settings=Settings(subscriber_threads=1)
    )
    with caplog.at_level(logging.INFO, logger="signalbus.subscribers"), Running(consumer) as run:
        for topic in ("a.1", "hub.1", "b.1", "a.2"):
            send(broker, topic)
        wait_for(lambda: len(got) == 2 and consumer.runner.stats.dead_lettered == 1, WAIT)
    assert got == ["a.1", "a.2"]
    assert run.hub == ["hub.1"]  # the hub's patterns, not the subscribers', reach the hub
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("memory:// keeps no queue for subscribers")
    assert "at most once" in messages[0]
    assert any("for subscriber fail not kept (RuntimeError: no)" in m for m in messages)


def test_retry_delays_double_from_one_second_to_a_cap() -> None:
    assert [retry_delay(n) for n in (1, 2, 3, 4, 5, 6, 7, 20)] == [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0,
    ]  # fmt: skip


def test_the_reason_names_the_exception_class_and_its_message() -> None:
    assert describe_error(ValueError("boom")) == "ValueError: boom"
    assert describe_error(KeyError()) == "KeyError"
    assert describe_error(PaymentDeclined("x")) == "tests.bridges.test_remote.PaymentDeclined: x"
