"""The event: CloudEvents 1.0 in JSON structured mode (DESIGN.md, "Events")."""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import threading
import time

import pytest

from signalbus import Event, InvalidEvent, events
from signalbus.events import new_event_id

ID_GRAMMAR = re.compile(r"[0-9A-Za-z_\-]{1,64}")
REQUIRED = ("specversion", "id", "source", "type", "time", "datacontenttype", "topic")


def make(**overrides: object) -> Event:
    fields: dict[str, object] = {
        "id": "0193a1c4e8f27b5e9c1d2a3b4c5d6e7f",
        "source": "//web-1.example",
        "type": "shop.order.updated",
        "time": "2026-11-30T04:40:00.123456Z",
        "topic": "shop.order.42.updated",
        "data": {"id": 42, "status": "paid", "total": "12.50"},
        "subject": "/orders/42/",
    }
    fields.update(overrides)
    return Event(**fields)  # type: ignore[arg-type]


# -- creation -----------------------------------------------------------------------------


def test_created_event_has_every_required_attribute() -> None:
    event = Event.create("shop.order.42.updated", {"status": "paid"})
    body = json.loads(event.encode())
    for name in REQUIRED:
        assert body[name], name
    assert body["specversion"] == "1.0"
    assert body["datacontenttype"] == "application/json"
    assert body["topic"] == "shop.order.42.updated"
    assert body["data"] == {"status": "paid"}
    assert "subject" not in body


@pytest.mark.parametrize(
    ("overrides", "keys"),
    [
        ({}, ["subject", "time", "datacontenttype", "topic", "data"]),
        ({"subject": None, "data": None}, ["time", "datacontenttype", "topic"]),
        (
            {"extensions": {"dataomitted": True}, "data": None},
            ["subject", "time", "datacontenttype", "topic", "dataomitted"],
        ),
    ],
)
def test_the_envelope_of_parts_is_the_events_own_json(
    overrides: dict[str, object], keys: list[str]
) -> None:
    event = make(**overrides)
    parts = (event.id, event.source, event.type, event.time, event.topic)
    built = events.envelope(*parts, event.data, event.subject, event.extensions)
    assert list(built) == ["specversion", "id", "source", "type", *keys]  # DESIGN.md's order
    assert list(built.items()) == list(event.to_dict().items())  # the same keys, in order
    assert Event.decode(json.dumps(built)) == event


def test_a_stamp_is_a_fresh_id_and_the_time_now() -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    event_id, stamped = events.new_stamp()
    later = Event.create("a.b")
    assert ID_GRAMMAR.fullmatch(event_id)
    assert event_id < later.id  # in creation order
    assert before <= dt.datetime.fromisoformat(stamped) <= dt.datetime.fromisoformat(later.time)


def test_type_defaults_to_the_topic() -> None:
    assert Event.create("billing.invoice.7.paid").type == "billing.invoice.7.paid"


def test_given_type_subject_and_source_are_kept() -> None:
    event = Event.create(
        "shop.order.42.updated", type="shop.order.updated", subject="/orders/42/", source="//me"
    )
    assert (event.type, event.subject, event.source) == (
        "shop.order.updated",
        "/orders/42/",
        "//me",
    )


def test_default_source_names_this_host() -> None:
    assert Event.create("a.b").source == f"//{socket.gethostname()}"


def test_time_is_utc_iso8601_with_microseconds_near_now() -> None:
    before = dt.datetime.now(dt.UTC)
    event = Event.create("a.b")
    after = dt.datetime.now(dt.UTC)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", event.time)
    stamp = dt.datetime.fromisoformat(event.time)
    assert before - dt.timedelta(milliseconds=1) <= stamp <= after + dt.timedelta(milliseconds=1)


def test_time_is_the_instant_of_the_id_to_the_microsecond(monkeypatch: pytest.MonkeyPatch) -> None:
    # A clock of its own, so that this process's later ids are not pushed into the future.
    monkeypatch.setattr(events, "_clock", events._IdClock())
    instant = dt.datetime(2026, 11, 30, 4, 40, 0, 123456, tzinfo=dt.UTC)
    ns = (instant - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1) * 1000
    monkeypatch.setattr(time, "time_ns", lambda: ns + 999)
    event = Event.create("a.b")
    assert event.time == "2026-11-30T04:40:00.123456Z"
    assert event.id.startswith(f"{ns + 999:016x}")


@pytest.mark.parametrize(
    ("ns", "stamp"),
    [
        (500_000_000, "1970-01-01T00:00:00.500000Z"),  # the first second of all
        (1_764_467_999_999_999_000, "2025-11-30T01:59:59.999999Z"),
        (1_764_468_000_000_000_000, "2025-11-30T02:00:00.000000Z"),  # a new second
    ],
)
def test_a_fresh_clock_tells_the_time_of_any_second(
    ns: int, stamp: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "time_ns", lambda: ns)
    assert events._IdClock().next()[1] == stamp


# -- ids ----------------------------------------------------------------------------------


def test_ids_follow_the_grammar() -> None:
    for _ in range(100):
        assert ID_GRAMMAR.fullmatch(new_event_id())
        assert ID_GRAMMAR.fullmatch(Event.create("a.b").id)


def test_ids_sort_as_strings_in_creation_order() -> None:
    ids = [new_event_id() if i % 2 else Event.create("a.b").id for i in range(20_000)]
    assert sorted(ids) == ids
    assert len(set(ids)) == len(ids)


def test_ids_made_by_many_threads_are_unique_and_ordered_per_thread() -> None:
    per_thread: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(len(per_thread))

    def make_ids(out: list[str]) -> None:
        start.wait()
        out.extend(new_event_id() for _ in range(2_000))

    threads = [threading.Thread(target=make_ids, args=(out,)) for out in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for ids in per_thread for i in ids]
    assert len(set(every)) == len(every) == 16_000
    for ids in per_thread:
        assert sorted(ids) == ids


def test_ids_still_increase_when_the_clock_goes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    first = new_event_id()
    monkeypatch.setattr(time, "time_ns", lambda: 1_000)
    second, third = new_event_id(), new_event_id()
    assert first < second < third


@pytest.mark.parametrize("good", ["a", "A-z_0", "x" * 64])
def test_id_of_up_to_64_allowed_characters_is_accepted(good: str) -> None:
    assert make(id=good).id == good


@pytest.mark.parametrize(
    "bad", ["", "x" * 65, "a b", "a.b", "é", "a/b", "a\nb", "a\rb", "a\x00b", 42, None]
)
def test_id_outside_the_grammar_is_rejected(bad: object) -> None:
    with pytest.raises(InvalidEvent, match=r"event id .* is not 1 to 64 characters"):
        make(id=bad)


# -- attribute checks ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["type", "subject", "source", "time", "datacontenttype"])
@pytest.mark.parametrize("breaker", ["\r", "\n", "\x00"], ids=["CR", "LF", "NUL"])
def test_cr_lf_nul_in_a_text_attribute_is_rejected(name: str, breaker: str) -> None:
    with pytest.raises(InvalidEvent, match=rf"{name}.*contains CR, LF or NUL"):
        make(**{name: f"shop{breaker}order"})


@pytest.mark.parametrize("breaker", ["\r", "\n", "\x00"], ids=["CR", "LF", "NUL"])
def test_cr_lf_nul_in_the_topic_is_rejected(breaker: str) -> None:
    with pytest.raises(InvalidEvent, match="event topic"):
        make(topic=f"shop.order{breaker}.42")


@pytest.mark.parametrize("name", ["type", "subject", "source"])
def test_empty_text_attribute_is_rejected(name: str) -> None:
    with pytest.raises(InvalidEvent, match=rf"{name}.*must be a non-empty string"):
        make(**{name: ""})


def test_bad_topic_is_an_invalid_event_with_the_reason() -> None:
    with pytest.raises(InvalidEvent, match="word 2 is an empty word"):
        make(topic="shop..42")
    with pytest.raises(InvalidEvent, match="event topic"):
        Event.create("shop.order.*")


def test_specversion_other_than_1_0_is_rejected() -> None:
    with pytest.raises(InvalidEvent, match="specversion"):
        make(specversion="0.3")


def test_extension_cannot_shadow_a_core_attribute() -> None:
    with pytest.raises(InvalidEvent, match="topic"):
        make(extensions={"topic": "billing.secret"})


def test_invalid_event_is_a_value_error() -> None:
    assert issubclass(InvalidEvent, ValueError)


# -- encode / decode ----------------------------------------------------------------------


def test_encoding_is_one_line_of_json_with_the_contract_attributes() -> None:
    body = make().encode()
    assert b"\n" not in body
    assert json.loads(body) == {
        "specversion": "1.0",
        "id": "0193a1c4e8f27b5e9c1d2a3b4c5d6e7f",
        "source": "//web-1.example",
        "type": "shop.order.updated",
        "subject": "/orders/42/",
        "time": "2026-11-30T04:40:00.123456Z",
        "datacontenttype": "application/json",
        "topic": "shop.order.42.updated",
        "data": {"id": 42, "status": "paid", "total": "12.50"},
    }


@pytest.mark.parametrize(
    "event",
    [
        make(),
        make(subject=None, data=None),
        make(data=[1, "two", None, {"x": 3.5}]),
        make(data="line\nbreak\u2028"),
        make(extensions={"traceparent": "00-abc-def-01"}),
        Event.create("billing.invoice.7.paid", {"amount": "12.50"}),
    ],
)
def test_decode_of_encode_gives_the_same_event(event: Event) -> None:
    assert Event.decode(event.encode()) == event
    assert Event.decode(event.encode().decode()) == event


def test_event_without_data_has_no_data_member() -> None:
    assert "data" not in json.loads(make(data=None).encode())


def test_decode_of_non_json_is_an_invalid_event() -> None:
    with pytest.raises(InvalidEvent, match="not JSON"):
        Event.decode(b"{not json")


@pytest.mark.parametrize(("body", "kind"), [(b"[]", "list"), (b'"x"', "str"), (b"1", "int")])
def test_decode_of_a_non_object_is_an_invalid_event(body: bytes, kind: str) -> None:
    with pytest.raises(InvalidEvent, match=f"an event is a JSON object, not {kind}"):
        Event.decode(body)


def test_decode_names_every_missing_attribute() -> None:
    body = json.loads(make().encode())
    del body["id"], body["topic"]
    with pytest.raises(InvalidEvent, match=r"lacks required attribute.*id, topic"):
        Event.decode(json.dumps(body))


@pytest.mark.parametrize("name", REQUIRED)
def test_decode_rejects_a_message_missing_any_required_attribute(name: str) -> None:
    body = json.loads(make().encode())
    del body[name]
    with pytest.raises(InvalidEvent, match=name):
        Event.decode(json.dumps(body))


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("topic", "shop..x", "event topic"),
        ("topic", "shop.#", "event topic"),
        ("topic", 42, "event topic"),
        ("id", "a b", "event id"),
        ("type", "a\nb", "contains CR, LF or NUL"),
        ("source", None, "must be a non-empty string"),
        ("specversion", "2.0", "specversion"),
    ],
)
def test_decode_rejects_bad_attribute_values(field: str, value: object, reason: str) -> None:
    body = json.loads(make().encode())
    body[field] = value
    with pytest.raises(InvalidEvent, match=reason):
        Event.decode(json.dumps(body))


def test_decode_keeps_unknown_attributes_as_extensions() -> None:
    body = json.loads(make().encode())
    body["traceparent"] = "00-abc-def-01"
    event = Event.decode(json.dumps(body))
    assert event.extensions == {"traceparent": "00-abc-def-01"}
    assert json.loads(event.encode())["traceparent"] == "00-abc-def-01"
