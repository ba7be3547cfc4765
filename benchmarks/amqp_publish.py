"""Events per second into RabbitMQ with publisher confirms: `AMQPBroker` against bare pika.

    python -m benchmarks.amqp_publish [--url amqp://guest:guest@127.0.0.1:5672/]
                                      [--count 10000] [--repeat 3]

Both publishers send the same pre-encoded events from one thread, each waiting
for its confirm before the next, with the same properties (content type, id,
type, timestamp, persistent), to a fresh topic exchange to which one queue is
bound (as a worker's would be; it is purged between runs, and deleted at the end):

- ``bare pika``: a ``BlockingConnection`` channel in confirm mode, ``basic_publish``
  in a loop: the floor of a synchronous, confirmed publisher;
- ``AMQPBroker``: ``publish()``, which hands the event to the I/O thread and waits
  for the confirm (the price of one connection per process, thread-safe);
- ``AMQPBroker, 8 threads``: the same count shared by 8 threads, where the I/O
  thread publishes what is queued as one batch (not one thread: shown apart).

The variants are interleaved within each repetition; the table shows medians.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import threading
import time
import uuid
from collections.abc import Callable

import pika

from brokers.amqp import AMQPBroker
from signalbus import Event

URL = "amqp://guest:guest@127.0.0.1:5672/"


def make_events(count: int) -> list[Event]:
    return [
        Event.create(f"bench.item.{i}.updated", {"i": i, "name": "x" * 40}) for i in range(count)
    ]


def bare_pika(url: str, exchange: str, events: list[Event], bodies: list[bytes]) -> float:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()
    started = time.perf_counter()
    for event, body in zip(events, bodies, strict=True):
        properties = pika.BasicProperties(
            content_type="application/json",
            message_id=event.id,
            type=event.type,
            timestamp=int(time.time()),
            delivery_mode=pika.DeliveryMode.Persistent.value,
        )
        channel.basic_publish(exchange, event.topic, body, properties)
    elapsed = time.perf_counter() - started
    connection.close()
    return elapsed


def signalbus_broker(url: str, exchange: str, events: list[Event], bodies: list[bytes]) -> float:
    broker = AMQPBroker(url, exchange=exchange)
    broker.publish("bench.warm.up", bodies[0])  # connect outside the timing, as bare pika does
    started = time.perf_counter()
    for event, body in zip(events, bodies, strict=True):
        broker.publish(event.topic, body)
    elapsed = time.perf_counter() - started
    broker.close()
    return elapsed


def signalbus_threads(url: str, exchange: str, events: list[Event], bodies: list[bytes]) -> float:
    broker = AMQPBroker(url, exchange=exchange)
    broker.publish("bench.warm.up", bodies[0])
    share = [list(zip(events[n::8], bodies[n::8], strict=True)) for n in range(8)]

    def publish(pairs: list[tuple[Event, bytes]]) -> None:
        for event, body in pairs:
            broker.publish(event.topic, body)

    threads = [threading.Thread(target=publish, args=(pairs,)) for pairs in share]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    print(f"  (8 threads: {broker.sent / max(broker.batches, 1):.1f} events per batch)")
    broker.close()
    return elapsed


VARIANTS: dict[str, Callable[[str, str, list[Event], list[bytes]], float]] = {
    "bare pika (BlockingConnection, confirms)": bare_pika,
    "AMQPBroker.publish (I/O thread, confirms)": signalbus_broker,
    "AMQPBroker.publish, 8 threads": signalbus_threads,
}


def run(url: str, count: int, repeat: int) -> dict[str, list[float]]:
    exchange = f"bench-amqp-{uuid.uuid4().hex[:12]}"
    admin = pika.BlockingConnection(pika.URLParameters(url))
    channel = admin.channel()
    channel.exchange_declare(exchange, "topic", durable=True)
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, exchange, "#")
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    try:
        for round_ in range(repeat):
            events = make_events(count)
            bodies = [event.encode() for event in events]
            for name, variant in VARIANTS.items():
                channel.queue_purge(queue)
                elapsed = variant(url, exchange, events, bodies)
                rates[name].append(count / elapsed)
                print(f"round {round_ + 1}: {name}: {count / elapsed:,.0f} events/s")
    finally:
        channel.exchange_delete(exchange)
        admin.close()
    return rates


def table(rates: dict[str, list[float]], count: int, repeat: int) -> str:
    medians = {name: statistics.median(values) for name, values in rates.items()}
    bare, ours = list(medians.values())[:2]
    rows = [
        f"AMQP publish with confirms: {count:,} events, one per confirm, median of {repeat}",
        f"Python {platform.python_version()}, pika {pika.__version__}",
        "",
        f"{'publisher':<45} {'events/s':>10}   runs",
    ]
    for name, median in medians.items():
        runs = ", ".join(f"{value:,.0f}" for value in rates[name])
        rows.append(f"{name:<45} {median:>10,.0f}   {runs}")
    rows.append(f"{'ratio AMQPBroker / bare pika (one thread)':<45} {ours / bare:>10.2f}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=URL)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rates = run(args.url, args.count, args.repeat)
    print()
    print(table(rates, args.count, args.repeat))


if __name__ == "__main__":
    main()
