"""The in-process fan-out and its replay buffer (DESIGN.md, "The SSE endpoint")."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from signalbus import Event
from signalbus import hub as hub_module
from signalbus.hub import Hub, Subscription, sse_frame

pytestmark = pytest.mark.anyio


def publish(hub: Hub, topic: str, data: Any = None) -> Event:
    event = Event.create(topic, data)
    hub.publish(event.id, event.topic, event.encode())
    return event


def parse(frame: bytes) -> tuple[str, dict[str, Any]]:
    """The id and the event of one SSE frame, checking its exact layout."""
    assert frame.endswith(b"\n\n")
    lines = frame[:-2].split(b"\n")
    assert len(lines) == 2, frame
    id_line, data_line = lines
    assert id_line.startswith(b"id: ")
    assert data_line.startswith(b"data: ")
    return id_line[4:].decode(), json.loads(data_line[6:])


def ids(frames: list[bytes]) -> list[str]:
    return [parse(f)[0] for f in frames]


async def batch(sub: Subscription) -> list[bytes] | None:
    with anyio.fail_after(2):
        return await sub.next_batch()


async def nothing_queued(sub: Subscription) -> bool:
    """True when ``next_batch`` would wait: everything in the hub is synchronous, so a
    frame that was queued is returned at once."""
    with anyio.move_on_after(0.02):
        await sub.next_batch()
        return False
    return True


# -- frames -------------------------------------------------------------------------------


def test_frame_is_id_then_data_then_blank_line() -> None:
    assert sse_frame("abc", b'{"a":1}') == b'id: abc\ndata: {"a":1}\n\n'


async def test_subscriber_receives_the_event_as_one_frame_with_its_id_and_json() -> None:
    hub = Hub()
    sub, replay = hub.subscribe(("shop.#",))
    assert replay == []
    event = publish(hub, "shop.order.42.updated", {"status": "paid"})
    frames = await batch(sub)
    assert frames == [b"id: " + event.id.encode() + b"\ndata: " + event.encode() + b"\n\n"]
    event_id, body = parse(frames[0])
    assert event_id == event.id
    assert body["data"] == {"status": "paid"}
    assert body["topic"] == "shop.order.42.updated"


# -- fan-out ------------------------------------------------------------------------------


async def test_events_go_to_matching_subscriptions_only() -> None:
    hub = Hub()
    orders, _ = hub.subscribe(("shop.order.*",))
    billing, _ = hub.subscribe(("billing.#",))
    everything, _ = hub.subscribe(("#",))
    order = publish(hub, "shop.order.42")
    invoice = publish(hub, "billing.invoice.7.paid")
    deep = publish(hub, "shop.order.42.updated")
    assert ids(await batch(orders)) == [order.id]  # type: ignore[arg-type]
    assert ids(await batch(billing)) == [invoice.id]  # type: ignore[arg-type]
    assert ids(await batch(everything)) == [order.id, invoice.id, deep.id]  # type: ignore[arg-type]


async def test_subscription_with_several_matching_patterns_gets_one_frame_per_event() -> None:
    hub = Hub()
    sub, _ = hub.subscribe(("shop.order.*", "shop.#", "#"))
    first = publish(hub, "shop.order.1")
    second = publish(hub, "shop.item")
    assert ids(await batch(sub)) == [first.id, second.id]  # type: ignore[arg-type]


async def test_frames_queued_while_not_reading_come_in_one_batch_in_order() -> None:
    hub = Hub()
    sub, _ = hub.subscribe(("a.*",))
    events = [publish(hub, f"a.{i}") for i in range(10)]
    assert ids(await batch(sub)) == [e.id for e in events]  # type: ignore[arg-type]
    assert await nothing_queued(sub)


async def test_waiting_reader_is_woken_by_a_new_event() -> None:
    hub = Hub()
    sub, _ = hub.subscribe(("a",))
    got: list[list[bytes] | None] = []
    async with anyio.create_task_group() as tg:

        async def read() -> None:
            got.append(await batch(sub))

        tg.start_soon(read)
        await anyio.sleep(0.01)
        event = publish(hub, "a")
    assert ids(got[0]) == [event.id]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("first_pattern", "joining_pattern"),
    [("a.b", "a.*"), ("a.*", "a.*")],
    ids=["a pattern new to the hub", "a pattern already in use"],
)
async def test_a_stream_joining_after_events_were_routed_receives_later_events(
    first_pattern: str, joining_pattern: str
) -> None:
    hub = Hub()
    first, _ = hub.subscribe((first_pattern,))
    publish(hub, "a.b")
    joining, _ = hub.subscribe((joining_pattern,))
    later = publish(hub, "a.b")
    assert ids(await batch(joining)) == [later.id]  # type: ignore[arg-type]
    assert len(await batch(first)) == 2  # type: ignore[arg-type]


async def test_a_stream_that_left_a_pattern_in_use_is_not_counted_for_later_events() -> None:
    hub = Hub()
    staying, _ = hub.subscribe(("a.*",))
    leaving, _ = hub.subscribe(("a.*",))
    publish(hub, "a.1")
    await batch(staying)
    hub.unsubscribe(leaving)
    publish(hub, "a.2")
    await batch(staying)
    assert hub.stats.frames_queued == 2 + 1


async def test_unsubscribe_stops_delivery_and_ends_the_stream() -> None:
    hub = Hub()
    sub, _ = hub.subscribe(("a.b",))
    other, _ = hub.subscribe(("a.*",))
    publish(hub, "a.b")
    hub.unsubscribe(sub)
    assert await batch(sub) is None
    assert hub.subscriptions == 1
    publish(hub, "a.b")  # the route cached for a.b must not name the removed pattern
    assert len(await batch(other)) == 2  # type: ignore[arg-type]
    hub.unsubscribe(other)
    assert hub.subscriptions == 0
    publish(hub, "a.b")


async def test_unsubscribe_wakes_a_waiting_reader_with_none() -> None:
    hub = Hub()
    sub, _ = hub.subscribe(("a",))
    got: list[object] = []
    async with anyio.create_task_group() as tg:

        async def read() -> None:
            got.append(await batch(sub))

        tg.start_soon(read)
        await anyio.sleep(0.01)
        hub.unsubscribe(sub)
    assert got == [None]


async def test_close_all_ends_every_stream() -> None:
    hub = Hub()
    subs = [hub.subscribe((pattern,))[0] for pattern in ("a", "b.#", "#")]
    publish(hub, "a")
    got: list[object] = []
    async with anyio.create_task_group() as tg:

        async def read(sub: Subscription) -> None:
            got.append(await batch(sub))

        tg.start_soon(read, subs[1])
        await anyio.sleep(0.01)
        hub.close_all()
    assert got == [None]
    assert [await batch(s) for s in subs] == [None, None, None]
    assert all(s.reason == "shutdown" for s in subs)
    assert hub.subscriptions == 0
    publish(hub, "a")


# -- slow consumers -----------------------------------------------------------------------


async def test_subscription_past_its_queue_size_is_closed_while_others_get_everything() -> None:
    hub = Hub(queue_size=3)
    slow, _ = hub.subscribe(("#",))
    fast, _ = hub.subscribe(("#",))
    seen: list[str] = []
    published = []
    for i in range(3):
        published.append(publish(hub, f"t.{i}"))
        seen += ids(await batch(fast))  # type: ignore[arg-type]
    assert not slow.closed  # exactly queue_size frames wait: still open
    for i in range(3, 6):
        published.append(publish(hub, f"t.{i}"))
        seen += ids(await batch(fast))  # type: ignore[arg-type]
    assert slow.closed
    assert slow.reason == "overflow"
    assert await batch(slow) is None
    assert seen == [e.id for e in published]
    assert hub.subscriptions == 1
    assert hub.stats.overflow_disconnects == 1


# -- replay -------------------------------------------------------------------------------


async def test_known_last_event_id_replays_exactly_the_later_matching_events() -> None:
    hub = Hub()
    first = publish(hub, "shop.order.1")
    publish(hub, "billing.invoice.1")
    second = publish(hub, "shop.order.2")
    publish(hub, "billing.invoice.2")
    third = publish(hub, "shop.order.3.updated")
    sub, replay = hub.subscribe(("shop.order.*", "shop.order.#"), last_event_id=first.id)
    assert ids(replay) == [second.id, third.id]
    assert await nothing_queued(sub)
    live = publish(hub, "shop.order.4")
    assert ids(await batch(sub)) == [live.id]  # type: ignore[arg-type]
    assert hub.stats.replays == 1


async def test_replay_follows_arrival_order_not_id_order() -> None:
    hub = Hub()
    marker = publish(hub, "m")
    early, late = Event.create("a.1"), Event.create("a.2")
    for event in (late, early):  # the broker delivered them out of creation order
        hub.publish(event.id, event.topic, event.encode())
    _, replay = hub.subscribe(("a.*",), last_event_id=marker.id)
    assert ids(replay) == [late.id, early.id]
    _, replay = hub.subscribe(("a.*",), last_event_id=late.id)
    assert ids(replay) == [early.id]


async def test_resuming_from_the_newest_event_replays_nothing() -> None:
    hub = Hub()
    publish(hub, "a")
    newest = publish(hub, "a")
    _, replay = hub.subscribe(("#",), last_event_id=newest.id)
    assert replay == []


async def test_unknown_last_event_id_gives_one_reset_frame_with_the_newest_id() -> None:
    hub = Hub()
    publish(hub, "a")
    newest = publish(hub, "b")
    sub, replay = hub.subscribe(("a",), last_event_id="no-such-id")
    assert len(replay) == 1
    frame_id, body = parse(replay[0])
    assert frame_id == newest.id
    assert body["id"] == newest.id
    assert body["type"] == "signalbus.reset"
    assert hub.stats.resets == 1
    live = publish(hub, "a")
    assert ids(await batch(sub)) == [live.id]  # type: ignore[arg-type]
    _, again = hub.subscribe(("a",), last_event_id=frame_id)
    assert ids(again) == [live.id]


async def test_reset_on_an_empty_hub_resumes_from_everything_since() -> None:
    hub = Hub()
    _, replay = hub.subscribe(("#",), last_event_id="from-another-worker")
    reset_id, body = parse(replay[0])
    assert body["type"] == "signalbus.reset"
    assert len(replay) == 1
    events = [publish(hub, "a"), publish(hub, "b")]
    _, resumed = hub.subscribe(("#",), last_event_id=reset_id)
    assert ids(resumed) == [e.id for e in events]


async def test_events_evicted_past_replay_size_cannot_be_resumed_from() -> None:
    hub = Hub(replay_size=3)
    events = [publish(hub, f"a.{i}") for i in range(5)]
    _, replay = hub.subscribe(("#",), last_event_id=events[1].id)
    assert [parse(f)[1]["type"] for f in replay] == ["signalbus.reset"]
    assert ids(replay) == [events[4].id]
    _, replay = hub.subscribe(("#",), last_event_id=events[2].id)
    assert ids(replay) == [events[3].id, events[4].id]


async def test_reset_id_of_an_empty_hub_is_forgotten_once_events_are_evicted() -> None:
    hub = Hub(replay_size=2)
    _, replay = hub.subscribe(("#",), last_event_id="unknown")
    reset_id = parse(replay[0])[0]
    events = [publish(hub, f"a.{i}") for i in range(3)]
    _, replay = hub.subscribe(("#",), last_event_id=reset_id)
    # a.0 is gone: resuming "from the start" would skip it silently, so it is a reset.
    assert [parse(f)[1]["type"] for f in replay] == ["signalbus.reset"]
    assert ids(replay) == [events[2].id]


async def test_replayed_events_are_not_queued_again_as_live() -> None:
    hub = Hub()
    marker = publish(hub, "a")
    held = publish(hub, "a")
    sub, replay = hub.subscribe(("a",), last_event_id=marker.id)
    assert ids(replay) == [held.id]
    assert await nothing_queued(sub)


async def test_redelivered_event_stays_resumable_after_its_first_copy_is_evicted() -> None:
    # At-least-once brokers redeliver: the same id can reach the hub twice. While the
    # later copy is held, a client whose Last-Event-ID is that id must resume, not reset.
    hub = Hub(replay_size=2)
    event = Event.create("a.1")
    for _ in range(2):
        hub.publish(event.id, event.topic, event.encode())
    after = publish(hub, "a.2")  # evicts the first copy only
    _, replay = hub.subscribe(("#",), last_event_id=event.id)
    assert [parse(f)[1]["type"] for f in replay] == ["a.2"]
    assert ids(replay) == [after.id]


async def test_redelivered_event_reaches_each_stream_once() -> None:
    hub = Hub()
    sub, _ = hub.subscribe(("#",))
    event = Event.create("a.1")
    for _ in range(3):
        hub.publish(event.id, event.topic, event.encode())
    later = publish(hub, "a.2")
    assert ids(await batch(sub) or []) == [event.id, later.id]
    assert hub.stats.duplicates == 2


async def test_reset_all_tells_every_stream_to_refetch_and_forgets_the_gap() -> None:
    hub = Hub()
    before = publish(hub, "a.1")
    sub, _ = hub.subscribe(("#",))
    hub.reset_all()
    (frame,) = await batch(sub) or []
    reset_id, reset = parse(frame)
    assert reset["type"] == "signalbus.reset"
    # A resume from before the gap cannot be trusted: it resets too.
    _, replay = hub.subscribe(("#",), last_event_id=before.id)
    assert parse(replay[0])[1]["type"] == "signalbus.reset"
    # A resume from the reset's id replays everything after it.
    after = publish(hub, "a.2")
    _, replay = hub.subscribe(("#",), last_event_id=reset_id)
    assert ids(replay) == [after.id]


# -- direct writers -----------------------------------------------------------------------


class Writer:
    """A direct writer that takes what it is given while ``accepting``."""

    def __init__(self) -> None:
        self.accepting = True
        self.writes: list[bytes] = []

    def __call__(self, data: bytes) -> bool:
        if self.accepting:
            self.writes.append(data)
        return self.accepting


def frame_ids(data: bytes) -> list[str]:
    return [parse(f + b"\n\n")[0] for f in data.split(b"\n\n")[:-1]]


async def idle_reader(sub: Subscription, got: list[list[bytes] | None]) -> None:
    with anyio.fail_after(2):
        while (frames := await sub.next_batch()) is not None:
            got.append(frames)
    got.append(None)


@dataclass
class Stream:
    """A subscription with a direct writer, and what its reader got (None: the end)."""

    sub: Subscription
    writer: Writer
    got: list[list[bytes] | None]


@asynccontextmanager
async def idle_streams(hub: Hub, *patterns: tuple[str, ...]) -> AsyncIterator[list[Stream]]:
    """One stream per pattern tuple, each reader idle in ``next_batch``; all closed on exit."""
    streams = []
    for stream_patterns in patterns:
        sub, _ = hub.subscribe(stream_patterns)
        sub.writer = writer = Writer()
        streams.append(Stream(sub, writer, []))
    async with anyio.create_task_group() as tg:
        for stream in streams:
            tg.start_soon(idle_reader, stream.sub, stream.got)
        await anyio.sleep(0.01)
        yield streams
        hub.close_all()


async def test_a_burst_goes_to_an_idle_reader_s_direct_writer_as_one_write() -> None:
    hub = Hub()
    async with idle_streams(hub, ("a.*",)) as (stream,):
        writer = stream.writer
        burst = [publish(hub, f"a.{i}") for i in range(5)]
        assert writer.writes == []  # flushed once the burst is over, not per event
        await anyio.sleep(0.01)
        assert [frame_ids(w) for w in writer.writes] == [[e.id for e in burst]]
        single = publish(hub, "a.x")
        await anyio.sleep(0.01)
        assert frame_ids(writer.writes[-1]) == [single.id]
    assert stream.got == [None]  # the reader only saw the end


async def test_frames_a_direct_writer_refuses_go_to_the_reader_in_order() -> None:
    hub = Hub()
    async with idle_streams(hub, ("a.*",)) as (stream,):
        writer = stream.writer
        first = publish(hub, "a.1")
        await anyio.sleep(0.01)
        writer.accepting = False
        refused = [publish(hub, "a.2"), publish(hub, "a.3")]
        await anyio.sleep(0.01)
        writer.accepting = True
        last = publish(hub, "a.4")
        await anyio.sleep(0.01)
    assert [frame_ids(w) for w in writer.writes] == [[first.id], [last.id]]
    assert [ids(b) for b in stream.got[:-1]] == [[e.id for e in refused]]  # type: ignore[arg-type]


async def test_direct_writer_waits_while_the_reader_holds_a_batch() -> None:
    """The reader may still be writing what it took: a direct write now would overtake it."""
    hub = Hub()
    sub, _ = hub.subscribe(("a.*",))
    held = publish(hub, "a.1")
    assert ids(await batch(sub)) == [held.id]  # type: ignore[arg-type]
    sub.writer = writer = Writer()
    later = publish(hub, "a.2")  # the reader is not waiting: it is busy with a.1
    await anyio.sleep(0.01)
    assert writer.writes == []
    assert ids(await batch(sub)) == [later.id]  # type: ignore[arg-type]


async def test_a_frame_the_writer_refused_is_not_overtaken_while_the_reader_holds_it() -> None:
    hub = Hub()
    sub, _ = hub.subscribe(("a.*",))
    sub.writer = writer = Writer()
    writer.accepting = False
    reader = asyncio.create_task(sub.next_batch())
    await asyncio.sleep(0.01)
    refused = publish(hub, "a.1")
    assert ids(await reader) == [refused.id]  # type: ignore[arg-type]
    writer.accepting = True
    later = publish(hub, "a.2")  # the reader is still writing a.1
    await asyncio.sleep(0.01)
    assert writer.writes == []
    assert ids(await batch(sub)) == [later.id]  # type: ignore[arg-type]


async def test_a_burst_for_the_same_streams_is_joined_once_and_shared() -> None:
    hub = Hub()
    async with idle_streams(hub, ("a.*",), ("a.*",), ("a.*",)) as streams:
        burst = [publish(hub, f"a.{i}") for i in range(4)]
        await anyio.sleep(0.01)
    first = streams[0].writer.writes
    assert [frame_ids(w) for w in first] == [[e.id for e in burst]]
    assert all(s.writer.writes[0] is first[0] for s in streams)  # one join, the same bytes
    assert hub.stats.frames_queued == 12


async def test_a_burst_for_different_streams_gives_each_its_own_frames_in_one_write() -> None:
    hub = Hub()
    async with idle_streams(hub, ("a.*",), ("a.*", "b.*")) as (narrow, wide):
        a1, b1, a2 = publish(hub, "a.1"), publish(hub, "b.1"), publish(hub, "a.2")
        await anyio.sleep(0.01)
    assert [frame_ids(w) for w in narrow.writer.writes] == [[a1.id, a2.id]]
    assert [frame_ids(w) for w in wide.writer.writes] == [[a1.id, b1.id, a2.id]]


async def test_a_frame_queued_for_the_reader_is_not_overtaken_by_a_later_direct_write() -> None:
    """The reset is queued (the reader is woken for it); an event published in the same
    turn must follow it, not be written ahead of it."""
    hub = Hub()
    async with idle_streams(hub, ("#",)) as (stream,):
        hub.reset_all()
        after = publish(hub, "a.1")
        await anyio.sleep(0.01)
    frames = [f for w in stream.writer.writes for f in w.split(b"\n\n")[:-1]]
    frames += [f for b in stream.got if b for f in b"".join(b).split(b"\n\n")[:-1]]
    types = [parse(f + b"\n\n")[1]["type"] for f in frames]
    assert types == ["signalbus.reset", "a.1"]
    assert parse(frames[1] + b"\n\n")[0] == after.id


async def test_reset_all_comes_after_the_events_published_before_it() -> None:
    hub = Hub()
    sub, _ = hub.subscribe(("#",))
    before = publish(hub, "a.1")
    hub.reset_all()
    frames = await batch(sub) or []
    assert [parse(f)[0] for f in frames][:1] == [before.id]
    assert [parse(f)[1]["type"] for f in frames][1:] == ["signalbus.reset"]


def test_frames_queued_with_no_event_loop_wait_for_the_reader() -> None:
    hub = Hub()
    sub, _ = hub.subscribe(("a",))
    sub.writer = writer = Writer()
    events = [publish(hub, "a") for _ in range(3)]
    assert writer.writes == []

    async def read() -> list[bytes] | None:
        return await batch(sub)

    assert ids(anyio.run(read)) == [e.id for e in events]  # type: ignore[arg-type]


# -- long fan-outs --------------------------------------------------------------------------


def frames_of(stream: Stream) -> list[str]:
    """Every frame a stream got, written or read, as its event's topic, in order."""
    frames = [f for w in stream.writer.writes for f in w.split(b"\n\n")[:-1]]
    frames += [f for b in stream.got if b for f in b"".join(b).split(b"\n\n")[:-1]]
    return [parse(f + b"\n\n")[1]["topic"] for f in frames]


@pytest.fixture
def chunk_of_two(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_module, "FAN_OUT_CHUNK", 2)


@pytest.mark.usefixtures("chunk_of_two")
async def test_a_long_fan_out_is_written_a_chunk_per_turn_and_a_later_event_joins_it() -> None:
    hub = Hub()
    async with idle_streams(hub, *[("a.*",)] * 5) as streams:
        publish(hub, "a.1")
        await asyncio.sleep(0)  # one turn of the loop: one chunk
        assert sorted(len(s.writer.writes) for s in streams) == [0, 0, 0, 1, 1]
        publish(hub, "a.2")  # joins the pass under way
        await anyio.sleep(0.01)
    writes = sorted([frame_ids(w) for w in s.writer.writes] for s in streams)
    # the two written before a.2 arrived got it in a write of its own, after
    assert sorted(len(w) for w in writes) == [1, 1, 1, 2, 2]
    for stream in streams:
        assert frames_of(stream) == ["a.1", "a.2"]
    assert sum(len(w) == 1 and len(w[0]) == 2 for w in writes) == 3  # both in one write
    assert hub.stats.frames_queued == 10


@pytest.mark.usefixtures("chunk_of_two")
async def test_other_events_wait_for_a_long_fan_out_and_every_stream_keeps_its_order() -> None:
    hub = Hub()
    async with idle_streams(hub, *[("a.*",)] * 4, ("a.*", "b.*")) as streams:
        publish(hub, "a.1")
        await asyncio.sleep(0)
        publish(hub, "b.1")  # other streams: it waits for the pass
        publish(hub, "a.2")
        await anyio.sleep(0.01)
    for stream in streams[:4]:
        assert frames_of(stream) == ["a.1", "a.2"]
    assert frames_of(streams[4]) == ["a.1", "b.1", "a.2"]


@pytest.mark.usefixtures("chunk_of_two")
async def test_a_reset_during_a_long_fan_out_comes_after_its_events() -> None:
    hub = Hub()
    async with idle_streams(hub, *[("#",)] * 5) as streams:
        publish(hub, "a.1")
        await asyncio.sleep(0)
        publish(hub, "a.2")
        hub.reset_all()
        publish(hub, "a.3")
        await anyio.sleep(0.01)
    for stream in streams:
        assert frames_of(stream) == ["a.1", "a.2", "signalbus.reset", "a.3"]


@pytest.mark.usefixtures("chunk_of_two")
async def test_an_event_arriving_during_a_catch_up_pass_waits_for_it() -> None:
    hub = Hub()
    async with idle_streams(hub, *[("a.*",)] * 5) as streams:
        publish(hub, "a.1")
        await asyncio.sleep(0)  # streams 1 and 2
        publish(hub, "a.2")  # joins: 3 to 5 get it with a.1, 1 and 2 in a pass after
        await asyncio.sleep(0)  # 3 and 4
        await asyncio.sleep(0)  # 5, and the catch-up pass of a.2 begins with 1
        publish(hub, "a.3")  # for every stream: it must not join the catch-up pass
        await anyio.sleep(0.01)
    for stream in streams:
        assert frames_of(stream) == ["a.1", "a.2", "a.3"]


@pytest.mark.usefixtures("chunk_of_two")
async def test_streams_with_queued_frames_are_flushed_a_chunk_per_turn() -> None:
    hub = Hub()
    async with idle_streams(hub, *[("a.*", "b.*")] * 4, ("b.*",)) as streams:
        publish(hub, "a.1")
        publish(hub, "b.1")  # a burst for two sets of streams: queued, then flushed
        await asyncio.sleep(0)
        assert sorted(len(s.writer.writes) for s in streams) == [0, 0, 0, 1, 1]
        await anyio.sleep(0.01)
    for stream in streams[:4]:
        assert frames_of(stream) == ["a.1", "b.1"]
    assert frames_of(streams[4]) == ["b.1"]
