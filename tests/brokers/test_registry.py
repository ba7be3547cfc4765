"""Brokers by URL scheme, through the entry-point group ``signalbus.brokers``."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from brokers import registry
from brokers.base import Broker
from brokers.memory import MemoryBroker
from brokers.registry import broker_class, open_broker, schemes
from brokers.zeromq import ZeroMQBroker
from signalbus import ConfigurationError, UnknownBroker


def test_builtin_schemes_are_registered_through_entry_points() -> None:
    declared = {ep.name: ep.value for ep in registry.entry_points(group=registry.GROUP)}
    assert declared["memory"] == "brokers.memory:MemoryBroker"
    assert declared["zmq"] == "brokers.zeromq:ZeroMQBroker"


@pytest.mark.parametrize(
    ("url", "cls"),
    [
        ("memory://", MemoryBroker),
        ("MEMORY://x", MemoryBroker),
        ("zmq://127.0.0.1:5560", ZeroMQBroker),
    ],
)
def test_url_scheme_chooses_the_adapter(url: str, cls: type[Broker]) -> None:
    assert broker_class(url) is cls
    broker = open_broker(url)
    assert isinstance(broker, cls)
    assert broker.url == url


def test_opening_a_zmq_broker_connects_nothing() -> None:
    broker = open_broker("zmq://127.0.0.1:1")
    assert broker._socket is None  # type: ignore[attr-defined]


def test_unknown_scheme_suggests_the_nearest_and_masks_the_password() -> None:
    with pytest.raises(UnknownBroker) as info:
        open_broker("amqq://guest:secret@rabbit.example:5672/")
    message = str(info.value)
    assert "Did you mean amqp://?" in message
    assert "secret" not in message
    assert "amqq://guest:**@rabbit.example:5672/" in message
    assert "no broker for scheme amqq://" in message
    assert "known: " in message
    assert "\n" not in message


def test_unknown_scheme_far_from_any_gives_no_suggestion() -> None:
    with pytest.raises(UnknownBroker, match="no broker for scheme kafka://") as info:
        broker_class("kafka://localhost:9092")
    assert "Did you mean" not in str(info.value)


def test_url_without_scheme_is_an_unknown_broker_naming_it() -> None:
    with pytest.raises(UnknownBroker, match=r"no broker for scheme none in '127\.0\.0\.1:5560'"):
        broker_class("127.0.0.1:5560")


def test_unknown_scheme_with_a_bad_port_still_masks_the_password() -> None:
    with pytest.raises(UnknownBroker) as info:
        broker_class("amqpx://guest:secret@host:notaport/")
    assert "secret" not in str(info.value)
    assert "guest:**@host:notaport" in str(info.value)


def test_unknown_broker_is_a_configuration_error() -> None:
    assert issubclass(UnknownBroker, ConfigurationError)


def test_third_party_entry_point_adds_a_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    def entry_points(group: str) -> list[EntryPoint]:
        assert group == "signalbus.brokers"
        return [EntryPoint(name="custom", value="brokers.memory:MemoryBroker", group=group)]

    monkeypatch.setattr(registry, "entry_points", entry_points)
    assert schemes()["custom"] == "brokers.memory:MemoryBroker"
    assert broker_class("custom://") is MemoryBroker


def test_adapter_that_cannot_be_imported_is_a_one_line_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def entry_points(group: str) -> list[EntryPoint]:
        return [EntryPoint(name="nats", value="no_such_nats_adapter:NatsBroker", group=group)]

    monkeypatch.setattr(registry, "entry_points", entry_points)
    with pytest.raises(ConfigurationError, match="the nats:// broker needs no_such_nats_adapter"):
        broker_class("nats://localhost")


def test_broker_repr_masks_the_password() -> None:
    broker = open_broker("memory://user:secret@bus")
    assert "secret" not in repr(broker)
    assert repr(broker) == "<MemoryBroker memory://user:**@bus>"


def test_zmq_connect_timeout_comes_from_the_settings(settings) -> None:
    from brokers.zeromq import ZeroMQBroker

    settings.SIGNALBUS = {"ZMQ_CONNECT_TIMEOUT": 0.3}
    assert open_broker("zmq://127.0.0.1:1").connect_timeout == 0.3  # type: ignore[attr-defined]
    assert ZeroMQBroker("zmq://127.0.0.1:1", connect_timeout=2).connect_timeout == 2
