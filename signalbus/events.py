"""The event: a CloudEvents 1.0 event in JSON structured mode (DESIGN.md, "Events").

Ids are time-ordered within a process (string order is creation order), so a
stream's ``Last-Event-ID`` names a point in time as well as an event.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from . import codec
from .errors import InvalidEvent
from .topics import validate_topic

__all__ = ["Event", "check_text", "envelope", "new_event_id", "new_stamp"]

_ID = re.compile(r"[0-9A-Za-z_\-]{1,64}")
_REQUIRED = ("specversion", "id", "source", "type", "time", "datacontenttype", "topic")
_FORBIDDEN = re.compile(r"[\r\n\x00]")
_CORE = frozenset({*_REQUIRED, "subject", "data"})


class _IdClock:
    """Strictly increasing nanoseconds plus a random node that differs per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0
        self._second = (-1, "")  # no second yet
        self._node = os.urandom(8).hex()
        os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        self._lock = threading.Lock()
        self._node = os.urandom(8).hex()

    def next(self) -> tuple[str, str]:
        """A new id, and the time it names in RFC 3339, UTC, with microseconds."""
        with self._lock:
            now = time.time_ns()
            if now <= self._last:
                now = self._last + 1
            self._last = now
        seconds, rest = divmod(now, 1_000_000_000)
        second = self._second
        if seconds != second[0]:  # the date and time to the second, formatted once a second
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(seconds))
            second = self._second = (seconds, stamp)
        # 8 bytes, 16 hex digits, until 2554: the ids sort as strings
        return now.to_bytes(8).hex() + self._node, f"{second[1]}{rest // 1000:06d}Z"


_clock = _IdClock()


def new_stamp() -> tuple[str, str]:
    """A new event's id and time."""
    return _clock.next()


def new_event_id() -> str:
    """A unique id, 32 hex digits, that sorts after every id this process made before."""
    return _clock.next()[0]


def envelope(
    event_id: str,
    source: str,
    type: str,
    time: str,
    topic: str,
    data: Any = None,
    subject: str | None = None,
    extensions: dict[str, Any] | None = None,
    specversion: str = "1.0",
    datacontenttype: str = "application/json",
) -> dict[str, Any]:
    """The JSON object of an event: attributes in the order of DESIGN.md, then extensions,
    then ``data``. Builds no `Event`, for a caller that checked the parts itself."""
    out: dict[str, Any] = {
        "specversion": specversion,
        "id": event_id,
        "source": source,
        "type": type,
        "subject": subject,
        "time": time,
        "datacontenttype": datacontenttype,
        "topic": topic,
    }
    if subject is None:
        del out["subject"]
    if extensions:
        out.update(extensions)
    if data is not None:
        out["data"] = data
    return out


@functools.cache
def default_source() -> str:
    return f"//{socket.gethostname()}"


# Values already found clean: a process's events repeat their source, types and
# content type, so most checks are one set lookup (bounded: a set of at most 1,024).
_CLEAN: set[str] = set()
_REPEATED = frozenset({"source", "type", "specversion", "datacontenttype"})


def check_text(name: str, value: object) -> str:
    """``value``, or `InvalidEvent` unless it is a non-empty string without CR, LF or NUL
    (an attribute goes into SSE lines and HTTP headers)."""
    if type(value) is str and value in _CLEAN:
        return value
    if not isinstance(value, str) or not value:
        raise InvalidEvent(f"event attribute {name!r} must be a non-empty string")
    if _FORBIDDEN.search(value):
        raise InvalidEvent(f"event attribute {name!r} contains CR, LF or NUL: {value!r:.80}")
    if len(_CLEAN) < 1024 and name in _REPEATED:
        _CLEAN.add(value)
    return value


@dataclass(frozen=True, slots=True)
class Event:
    """One event. ``data`` is any JSON-encodable value (see `signalbus.codec`)."""

    id: str
    source: str
    type: str
    time: str
    topic: str
    data: Any = None
    subject: str | None = None
    specversion: str = "1.0"
    datacontenttype: str = "application/json"
    extensions: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _ID.fullmatch(self.id):
            raise InvalidEvent(
                f"event id {self.id!r:.80} is not 1 to 64 characters of 0-9 a-z A-Z _ -"
            )
        for name in ("source", "type", "time", "specversion", "datacontenttype"):
            check_text(name, getattr(self, name))
        if self.specversion != "1.0":
            raise InvalidEvent(f"specversion {self.specversion!r} is not 1.0")
        if self.subject is not None:
            check_text("subject", self.subject)
        try:
            validate_topic(self.topic)
        except ValueError as exc:
            raise InvalidEvent(f"event topic: {exc}") from exc
        # `to_dict` writes extensions after the core attributes: one named ``topic``
        # would silently reroute the event.
        clash = sorted(_CORE.intersection(self.extensions))
        if clash:
            raise InvalidEvent(f"extension attribute(s) {', '.join(clash)} shadow core attributes")

    @classmethod
    def create(
        cls,
        topic: str,
        data: Any = None,
        *,
        type: str | None = None,
        subject: str | None = None,
        source: str | None = None,
    ) -> Event:
        """A new event with a fresh id and the current time."""
        event_id, time = _clock.next()
        return cls(
            id=event_id,
            source=source or default_source(),
            type=topic if type is None else type,
            time=time,
            topic=topic,
            data=data,
            subject=subject,
        )

    def to_dict(self) -> dict[str, Any]:
        return envelope(
            self.id,
            self.source,
            self.type,
            self.time,
            self.topic,
            self.data,
            self.subject,
            self.extensions,
            self.specversion,
            self.datacontenttype,
        )

    def encode(self) -> bytes:
        """The event as one line of JSON: the broker message body and the SSE ``data:``."""
        return codec.dumps(self.to_dict())

    @classmethod
    def decode(cls, body: bytes | str) -> Event:
        """Parse and check a message body; `InvalidEvent` says what is wrong with it."""
        obj = codec.loads(body)
        if not isinstance(obj, dict):
            raise InvalidEvent(f"an event is a JSON object, not {type(obj).__name__}")
        missing = [name for name in _REQUIRED if name not in obj]
        if missing:
            raise InvalidEvent(f"event lacks required attribute(s): {', '.join(missing)}")
        return cls(
            id=obj["id"],
            source=obj["source"],
            type=obj["type"],
            time=obj["time"],
            topic=obj["topic"],
            data=obj.get("data"),
            subject=obj.get("subject"),
            specversion=obj["specversion"],
            datacontenttype=obj["datacontenttype"],
            extensions={k: v for k, v in obj.items() if k not in _CORE},
        )
