"""The lossless JSON codec for event data (DESIGN.md, "Events").

A consumer that parses a value's string gets exactly the value that was saved:
datetimes keep their microseconds and UTC offset (unlike Django's
``DjangoJSONEncoder``, which cuts them to milliseconds), a Decimal is the
string of its exact value. The output is always one line, as an SSE ``data:``
field requires: ``json`` escapes every control character inside strings, and
this module escapes the three other characters that ``str.splitlines`` (and so
some SSE clients' line readers) break on: U+0085, U+2028, U+2029.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from django.utils.duration import duration_iso_string
from django.utils.functional import Promise

from .errors import InvalidEvent

__all__ = ["dumps", "loads", "to_json_value"]


def to_json_value(value: Any) -> Any:
    """The JSON form of one value the standard encoder does not know."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, uuid.UUID | Promise):
        return str(value)
    if isinstance(value, dt.timedelta):
        return duration_iso_string(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"a {type(value).__name__} has no lossless JSON form: {value!r:.80}")


class _Encoder(threading.local):
    """This thread's encoder, built once: ``JSONEncoder.encode`` builds its C encoder anew
    on every call, a third of the cost of a small event. Its circularity markers are this
    thread's alone, and are emptied after a failure, which can leave some behind."""

    def __init__(self) -> None:
        self.markers: dict[int, Any] = {}
        make = getattr(json.encoder, "c_make_encoder", None)  # CPython's; not in typeshed
        if make is None:  # an interpreter without the C accelerator
            encode = json.JSONEncoder(
                ensure_ascii=False, separators=(",", ":"), default=to_json_value, allow_nan=False
            ).encode
            self.chunks: Callable[[Any, int], Sequence[str]] = lambda value, _: (encode(value),)
            return
        self.chunks = make(
            self.markers, to_json_value, json.encoder.encode_basestring, None, ":", ",",
            False, False, False,
        )  # fmt: skip


_encoder = _Encoder()
# Outside strings JSON has none of these, so escaping them everywhere keeps the value.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def dumps(value: Any) -> bytes:
    """One line of UTF-8 JSON; `InvalidEvent` for a value that has no lossless form."""
    encoder = _encoder
    try:
        text = "".join(encoder.chunks(value, 0))
        if not text.isascii():  # the three line breaks are not ASCII
            text = text.translate(_LINE_BREAKS)
        return text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        encoder.markers.clear()
        raise InvalidEvent(f"cannot encode event: {exc}") from exc


def loads(body: bytes | str) -> Any:
    """Parse JSON; `InvalidEvent` for anything that is not."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidEvent(f"not JSON: {exc}") from exc
