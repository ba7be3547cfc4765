"""The lossless JSON codec (DESIGN.md, "Events": representations are lossless)."""

from __future__ import annotations

import base64
import concurrent.futures
import datetime as dt
import decimal
import json
import math
import subprocess
import sys
import uuid

import pytest
from django.utils.dateparse import parse_duration
from django.utils.translation import gettext_lazy
from hypothesis import given, settings
from hypothesis import strategies as st

from signalbus import InvalidEvent, codec
from signalbus.codec import dumps, loads

# Same examples on every run: a red CI is reproducible, a green one is not luck.
PROPERTY = settings(max_examples=300, deadline=None, derandomize=True)


def round_trip(value: object) -> object:
    return loads(dumps({"v": value}))["v"]  # type: ignore[index]


# -- datetimes ----------------------------------------------------------------------------


def test_datetime_keeps_its_microseconds_and_offset() -> None:
    tz = dt.timezone(dt.timedelta(hours=5, minutes=30))
    when = dt.datetime(2026, 11, 30, 4, 40, 0, 123456, tzinfo=tz)
    text = round_trip(when)
    assert text == "2026-11-30T04:40:00.123456+05:30"


def test_datetime_with_one_microsecond_is_not_rounded_to_milliseconds() -> None:
    when = dt.datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=dt.UTC)
    assert dt.datetime.fromisoformat(round_trip(when)) == when  # type: ignore[arg-type]


offsets = st.timedeltas(
    min_value=dt.timedelta(hours=-23, minutes=-59), max_value=dt.timedelta(hours=23, minutes=59)
).map(dt.timezone)


@PROPERTY
@given(st.datetimes(timezones=offsets))
def test_aware_datetime_parses_back_to_the_same_instant_and_offset(when: dt.datetime) -> None:
    parsed = dt.datetime.fromisoformat(round_trip(when))  # type: ignore[arg-type]
    assert parsed == when
    assert parsed.utcoffset() == when.utcoffset()
    assert parsed.microsecond == when.microsecond


@PROPERTY
@given(st.datetimes())
def test_naive_datetime_parses_back_equal(when: dt.datetime) -> None:
    parsed = dt.datetime.fromisoformat(round_trip(when))  # type: ignore[arg-type]
    assert parsed == when
    assert parsed.tzinfo is None


@PROPERTY
@given(st.dates())
def test_date_parses_back_equal(day: dt.date) -> None:
    assert dt.date.fromisoformat(round_trip(day)) == day  # type: ignore[arg-type]


@PROPERTY
@given(st.times(timezones=st.none() | offsets))
def test_time_parses_back_equal(moment: dt.time) -> None:
    parsed = dt.time.fromisoformat(round_trip(moment))  # type: ignore[arg-type]
    assert parsed == moment
    assert parsed.utcoffset() == moment.utcoffset()


@PROPERTY
@given(st.timedeltas())
def test_timedelta_parses_back_equal(delta: dt.timedelta) -> None:
    text = round_trip(delta)
    assert isinstance(text, str)
    assert parse_duration(text) == delta


# -- decimals, uuids, lazy strings, bytes -------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["12.50", "0.1", "-0", "1E+2", "1E-21", "123456789012345678901234567890.123456789"],
)
def test_decimal_is_the_string_of_its_exact_value(text: str) -> None:
    assert round_trip(decimal.Decimal(text)) == text


@PROPERTY
@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_decimal_parses_back_to_the_same_digits_and_exponent(value: decimal.Decimal) -> None:
    parsed = decimal.Decimal(round_trip(value))  # type: ignore[arg-type]
    assert parsed.as_tuple() == value.as_tuple()


@PROPERTY
@given(st.uuids())
def test_uuid_is_its_string(value: uuid.UUID) -> None:
    text = round_trip(value)
    assert text == str(value)
    assert uuid.UUID(text) == value  # type: ignore[arg-type]


def test_lazy_string_is_its_text() -> None:
    assert round_trip(gettext_lazy("Order shipped")) == "Order shipped"


def test_bytes_are_base64() -> None:
    raw = bytes(range(256))
    assert base64.b64decode(round_trip(raw)) == raw  # type: ignore[arg-type]


def test_sets_and_tuples_become_lists() -> None:
    assert round_trip((1, 2)) == [1, 2]
    assert sorted(round_trip({3, 1, 2})) == [1, 2, 3]  # type: ignore[arg-type]


def test_nested_values_are_converted_at_every_depth() -> None:
    value = {"order": {"total": decimal.Decimal("12.50"), "lines": [uuid.UUID(int=1)]}}
    assert loads(dumps(value)) == {
        "order": {"total": "12.50", "lines": ["00000000-0000-0000-0000-000000000001"]}
    }


def test_output_is_compact_utf8() -> None:
    assert dumps({"a": [1, 2], "b": "é"}) == '{"a":[1,2],"b":"é"}'.encode()


# -- one line -----------------------------------------------------------------------------

LINE_BREAKERS = ["\n", "\r", "\r\n", "\x00", "\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c"]


@pytest.mark.parametrize("breaker", LINE_BREAKERS, ids=repr)
def test_output_is_one_line_whatever_the_strings_hold(breaker: str) -> None:
    value = {f"key{breaker}": f"before{breaker}after"}
    out = dumps(value)
    assert len(out.splitlines()) == 1
    assert len(out.decode("utf-8").splitlines()) == 1
    assert loads(out) == value


@PROPERTY
@given(st.text())
def test_any_string_encodes_on_one_line_and_decodes_back(text: str) -> None:
    out = dumps([text])
    assert len(out.decode("utf-8").splitlines()) == 1
    assert b"\n" not in out
    assert b"\r" not in out
    assert loads(out) == [text]


# -- errors -------------------------------------------------------------------------------


def test_unencodable_object_is_an_invalid_event_naming_its_type() -> None:
    class Basket:
        pass

    with pytest.raises(InvalidEvent, match=r"cannot encode event: a Basket has no lossless JSON"):
        dumps({"basket": Basket()})


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_non_finite_float_is_an_invalid_event(number: float) -> None:
    with pytest.raises(InvalidEvent, match=r"cannot encode event: Out of range float"):
        dumps({"x": number})


def test_circular_value_is_an_invalid_event() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(InvalidEvent, match=r"[Cc]ircular"):
        dumps(loop)


def test_non_string_key_that_json_cannot_hold_is_an_invalid_event() -> None:
    with pytest.raises(InvalidEvent, match="cannot encode event"):
        dumps({("a", "b"): 1})


def test_invalid_event_from_encoding_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="cannot encode event"):
        dumps(object())


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b"\xff\xfe\x00", "{'a': 1}"])
def test_loads_of_non_json_is_an_invalid_event(body: bytes | str) -> None:
    with pytest.raises(InvalidEvent, match="not JSON"):
        loads(body)


def test_loads_reads_bytes_and_text() -> None:
    assert loads(b'{"a":1}') == {"a": 1}
    assert loads('{"a":1}') == {"a": 1}
    assert json.loads(dumps({"a": "\u2028"})) == {"a": "\u2028"}


# -- the encoder ---------------------------------------------------------------------------

VALUES = [
    {"when": dt.datetime(2026, 11, 30, tzinfo=dt.UTC), "tags": ("a", "b"), "n": [1, 2.5, None]},
    {"text": "line\u2028break é", "nested": {"deep": [{"x": decimal.Decimal("1.10")}]}},
    ["top", "level", True],
]


@pytest.mark.parametrize("value", VALUES)
def test_without_the_c_accelerator_the_bytes_are_the_same(
    value: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = codec.dumps(value)
    monkeypatch.setattr(json.encoder, "c_make_encoder", None)
    monkeypatch.setattr(codec, "_encoder", codec._Encoder())
    assert codec.dumps(value) == expected
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(InvalidEvent, match=r"Circular reference detected"):
        codec.dumps(loop)


def test_a_value_that_failed_once_encodes_once_fixed() -> None:
    # The encoder is kept: a failure must not leave the value marked as being encoded.
    value: dict[str, list[object]] = {"items": [1, object()]}
    with pytest.raises(InvalidEvent, match="has no lossless JSON form"):
        codec.dumps(value)
    value["items"].pop()
    assert codec.dumps(value) == b'{"items":[1]}'


def test_a_circular_value_is_caught_even_with_a_high_recursion_limit() -> None:
    # Without circularity markers the C encoder would recurse until the C stack overflows.
    code = (
        "import sys; from django.conf import settings; settings.configure()\n"
        "from signalbus import codec\n"
        "sys.setrecursionlimit(1_000_000); loop = []; loop.append(loop)\n"
        "try: codec.dumps({'data': loop})\n"
        "except codec.InvalidEvent as exc: print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (
        0,
        "cannot encode event: Circular reference detected",
    ), done.stderr[-2000:]


def test_one_encoder_serves_many_threads_encoding_the_same_value() -> None:
    # Decimals call back into Python, where threads switch mid-value: an encoder that kept
    # circularity markers across calls would see the value "inside itself" in another thread.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        value = {"rows": [[decimal.Decimal(i), decimal.Decimal(-i)] for i in range(2_000)]}
        expected = codec.dumps(value)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert set(pool.map(codec.dumps, [value] * 64)) == {expected}
    finally:
        sys.setswitchinterval(interval)
