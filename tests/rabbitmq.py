"""RabbitMQ for the tests: whether one answers, and exchanges of their own, deleted after.

Every test gets an exchange no other test uses, so that tests (and several runs
sharing one broker) never see each other's messages.
"""

from __future__ import annotations

import functools
import uuid

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
REQUIRE_ENV = "SIGNALBUS_REQUIRE_AMQP"

_declared: set[str] = set()


@functools.cache
def rabbitmq_absent() -> str | None:
    """Why no RabbitMQ can be used on 127.0.0.1:5672, or None when one answers."""
    import pika

    from brokers.amqp import describe

    params = pika.URLParameters(AMQP_URL + "?socket_timeout=2&stack_timeout=3")
    try:
        pika.BlockingConnection(params).close()
    except Exception as exc:
        return f"no RabbitMQ answers at {AMQP_URL.replace(':guest@', ':**@')} ({describe(exc)})"
    return None


def unique_exchange() -> str:
    """A fresh exchange name, remembered so that `delete_exchanges` removes it."""
    name = f"signalbus-test-{uuid.uuid4().hex[:16]}"
    _declared.add(name)
    return name


def amqp_url() -> str:
    """A broker URL for the conformance suite: the local RabbitMQ, an exchange of its own."""
    return f"{AMQP_URL}?exchange={unique_exchange()}"


def delete_exchanges(*names: str) -> None:
    """Delete ``names`` (all remembered ones by default) if a broker is there to ask."""
    targets = set(names or _declared)
    _declared.difference_update(targets)
    if not targets or rabbitmq_absent() is not None:
        return
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        for name in sorted(targets):
            channel.exchange_delete(name)
    finally:
        connection.close()
