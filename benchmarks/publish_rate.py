"""Events per second from ``Model.save()`` into the broker (0MQ or RabbitMQ), in one process.

    python -m benchmarks.publish_rate [--broker zmq|amqp] [--count 10000] [--repeat 3]
                                      [--payload 100]

A real worker (``python -m signalbus worker``) is subscribed at the 0MQ
endpoint (or has its queue bound to a fresh RabbitMQ exchange, deleted after).
Each measurement runs in a fresh child process, the variants interleaved within
each repetition:

- ``save``: ``Tick.save()`` with Tick not bound (``BENCH_UNBOUND=1``): the bare ORM;
- ``signalbus``: ``Tick.save()`` with Tick bound: the event is built in ``post_save``
  and sent on commit;
- ``bare``: the floor of any publisher, sending the same bytes to the same worker:
  on 0MQ a bare pyzmq XPUB loop sending the two frames (topic, event JSON); on
  RabbitMQ ``benchmarks.amqp_publish.bare_pika`` (a ``BlockingConnection`` channel
  with confirms, one ``basic_publish`` after the other, same properties);
- ``save+zmq`` (0MQ only): the bare ORM save followed by the bare XPUB send of the same,
  ready-made bytes: after each save in autocommit, all after the block in atomic, as
  signalbus sends them. A send spaced by a save wakes libzmq's I/O thread each time
  (tens of µs), which a back-to-back loop never pays: this is the like-for-like floor.

``save`` and ``signalbus`` run twice: in autocommit (each save its own commit)
and with every save in one ``transaction.atomic()``. The table shows medians
of ``--repeat`` runs; the worker's ``/metrics`` tells how many events it took in.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import (
    BROKERS,
    ROOT,
    SETTINGS,
    Children,
    CpuWindow,
    Worker,
    bench_env,
    events_received,
    fmt,
    fresh_broker,
    median,
    migrate,
    print_machine,
    print_table,
    raise_on_sigterm,
    start_worker,
    stop,
    wait_received,
)

if TYPE_CHECKING:
    from signalbus import Event

WARMUP = 200  # untimed saves or sends first: connection, subscription, caches
MODES = ("autocommit", "atomic")
KINDS = ("save", "signalbus", "bare", "save+zmq")
SNDHWM = 100_000  # as signalbus's own publisher: a 10,000-event burst never blocks


def _payload(i: int, size: int) -> str:
    head = f"tick {i:08d} "
    return head + "x" * max(0, size - len(head))


# -- the children: one timed loop each ----------------------------------------------------


def time_saves(kind: str, mode: str, count: int, size: int) -> tuple[float, float | None]:
    """Seconds for ``count`` ``Tick.save()`` calls, in autocommit or in one atomic block,
    and in atomic mode the seconds of the block's commit, where the events are sent."""
    import django

    django.setup()
    from django.db import transaction
    from django.db.models.signals import post_save

    from benchmarks.benchproject.bench.models import Tick

    if post_save.has_listeners(Tick) != (kind == "signalbus"):
        raise RuntimeError(f"{kind}: Tick is {'not ' if kind == 'signalbus' else ''}bound")
    ticks = [Tick(payload=_payload(i, size)) for i in range(WARMUP + count)]
    for tick in ticks[:WARMUP]:
        tick.save()
    timed = ticks[WARMUP:]
    start = time.perf_counter()
    if mode == "atomic":
        with transaction.atomic():
            for tick in timed:
                tick.save()
            committing = time.perf_counter()
        end = time.perf_counter()
        return end - start, end - committing
    for tick in timed:
        tick.save()
    return time.perf_counter() - start, None


def time_saves_then_sends(broker_url: str, mode: str, count: int, size: int) -> float:
    """Seconds for ``count`` unbound ``Tick.save()`` calls each followed by a bare XPUB send
    of its event's bytes (in atomic mode, the sends after the block)."""
    import django

    django.setup()
    from django.db import transaction

    from benchmarks.benchproject.bench.models import Tick

    ticks = [Tick(payload=_payload(i, size)) for i in range(WARMUP + count)]
    frames = _frames(WARMUP + count, size)
    with _bare_xpub(broker_url) as sock:
        for tick, pair in zip(ticks[:WARMUP], frames[:WARMUP], strict=True):
            tick.save()
            sock.send_multipart(pair)
        timed = list(zip(ticks[WARMUP:], frames[WARMUP:], strict=True))
        start = time.perf_counter()
        if mode == "atomic":
            with transaction.atomic():
                for tick, _ in timed:
                    tick.save()
            for _, pair in timed:
                sock.send_multipart(pair)
        else:
            for tick, pair in timed:
                tick.save()
                sock.send_multipart(pair)
        return time.perf_counter() - start


def _event(i: int, size: int) -> Event:
    """The event signalbus would send for the ``i``-th Tick created."""
    from signalbus import Event

    topic = f"bench.tick.{i + 1}.created"
    data = {"payload": _payload(i, size)}
    return Event.create(topic, data, type="bench.tick.created", subject=f"/bench/tick/{i + 1}")


def time_zmq_sends(broker_url: str, count: int, size: int) -> float:
    """Seconds for ``count`` two-frame sends on a bare XPUB socket, once a worker subscribed."""
    frames = _frames(WARMUP + count, size)
    with _bare_xpub(broker_url) as sock:
        for pair in frames[:WARMUP]:
            sock.send_multipart(pair)
        start = time.perf_counter()
        for pair in frames[WARMUP:]:
            sock.send_multipart(pair)
        return time.perf_counter() - start


def _frames(count: int, size: int) -> list[tuple[bytes, bytes]]:
    events = [_event(i, size) for i in range(count)]
    return [(event.topic.encode("ascii"), event.encode()) for event in events]


@contextmanager
def _bare_xpub(broker_url: str) -> Iterator[Any]:
    """A bare pyzmq XPUB connected to the worker, once the worker has subscribed."""
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.XPUB)
    sock.setsockopt(zmq.SNDHWM, SNDHWM)
    sock.connect(broker_url.replace("zmq://", "tcp://", 1))
    try:
        if not sock.poll(10_000) or sock.recv()[:1] != b"\x01":
            raise RuntimeError(f"no worker subscribed at {broker_url} within 10 s")
        yield sock
    finally:
        sock.close(linger=5_000)
        context.term()


def time_pika_publishes(broker_url: str, count: int, size: int) -> float:
    """Seconds for ``count`` confirmed publishes of `benchmarks.amqp_publish`'s bare pika loop
    (its connection opened outside the timing), after ``WARMUP`` on a connection of their own."""
    from brokers.amqp import parse_amqp_url

    from .amqp_publish import bare_pika

    events = [_event(i, size) for i in range(WARMUP + count)]
    bodies = [event.encode() for event in events]
    url, exchange = broker_url.partition("?")[0], parse_amqp_url(broker_url)[1]
    assert exchange is not None
    bare_pika(url, exchange, events[:WARMUP], bodies[:WARMUP])
    return bare_pika(url, exchange, events[WARMUP:], bodies[WARMUP:])


def run_child(args: argparse.Namespace) -> int:
    url = os.environ["SIGNALBUS_BROKER_URL"]
    commit = None
    if args.child == "bare":
        timer = time_zmq_sends if url.startswith("zmq:") else time_pika_publishes
        seconds = timer(url, args.count, args.payload)
    elif args.child == "save+zmq":
        seconds = time_saves_then_sends(url, args.mode, args.count, args.payload)
    else:
        seconds, commit = time_saves(args.child, args.mode, args.count, args.payload)
    print(json.dumps({"seconds": seconds, "commit_seconds": commit}))
    return 0


# -- the parent -----------------------------------------------------------------------------


def measure(
    children: Children, env: dict[str, str], kind: str, mode: str, args: argparse.Namespace
) -> tuple[float, float | None]:
    """Run one child; the events per second it reached, and the seconds of its atomic
    block's commit (None in autocommit and for the loops without a save)."""
    argv = [sys.executable, "-m", "benchmarks.publish_rate", "--child", kind, "--mode", mode]
    argv += ["--count", str(args.count), "--payload", str(args.payload)]
    child_env = {**env, "DJANGO_SETTINGS_MODULE": SETTINGS}
    if kind in ("save", "save+zmq"):
        child_env["BENCH_UNBOUND"] = "1"
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=child_env, cwd=ROOT)
    children.add(proc)
    try:
        out, _ = proc.communicate(timeout=args.timeout)
    finally:
        stop(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} {mode} failed with exit status {proc.returncode}")
    result = json.loads(out)
    return args.count / result["seconds"], result["commit_seconds"]


Runs = dict[tuple[str, str], list[float]]


def measure_all(
    children: Children, env: dict[str, str], worker: Worker, args: argparse.Namespace
) -> tuple[Runs, dict[str, list[float]], dict[tuple[str, str], list[int]]]:
    """Every variant ``--repeat`` times, interleaved: rates, the seconds of each kind's
    atomic-block commit, and events the worker took in."""
    rates: Runs = defaultdict(list)
    commits: dict[str, list[float]] = defaultdict(list)
    taken: dict[tuple[str, str], list[int]] = defaultdict(list)
    kinds = KINDS if args.broker == "zmq" else KINDS[:3]
    plan = [(kind, mode) for mode in MODES for kind in kinds if (kind, mode) != ("bare", "atomic")]
    for rep in range(1, args.repeat + 1):
        for kind, mode in plan:
            before = events_received(worker)
            window = CpuWindow([worker.pid])
            rate, commit = measure(children, env, kind, mode, args)
            window.mark()
            rates[kind, mode].append(rate)
            if commit is not None:
                commits[kind].append(commit)
            if kind != "save":
                after = wait_received(worker, before + WARMUP + args.count)
                taken[kind, mode].append(after - before - WARMUP)
            others = window.percent()[-1]
            print(
                f"  run {rep}: {kind:9} {mode:10} {fmt(rate):>9}/s"
                f"  (other processes on the machine: {others:.0f}% of a core)",
                file=sys.stderr,
            )
    return rates, commits, taken


def print_results(
    rates: Runs,
    commits: dict[str, list[float]],
    taken: dict[tuple[str, str], list[int]],
    args: argparse.Namespace,
) -> None:
    bare_rate = median(rates["bare", "autocommit"])
    bare = "zmq send" if args.broker == "zmq" else "pika publish"
    headers = ["mode", "saves", "bare save/s", "save+signalbus/s", f"bare {bare}/s"]
    headers += ["signalbus÷save", f"signalbus÷{bare.split()[0]}", "signalbus µs/save"]
    floor = args.broker == "zmq"
    if floor:
        headers += ["save+zmq/s", "signalbus µs ÷ save+zmq µs"]
    headers += ["worker got (min)"]
    rows = []
    for mode in MODES:
        save, bus = median(rates["save", mode]), median(rates["signalbus", mode])
        added = 1e6 / bus - 1e6 / save
        got = f"{min(taken['signalbus', mode]):,}"
        rows.append(
            [mode, fmt(args.count), fmt(save), fmt(bus), fmt(bare_rate), f"{bus / save:.2f}"]
        )
        rows[-1] += [f"{bus / bare_rate:.3f}", fmt(added, 1)]
        if floor:
            both = median(rates["save+zmq", mode])
            rows[-1] += [fmt(both), f"{both / bus:.2f}"]
        rows[-1].append(got)
    print(
        f"publish rate ({args.broker}): medians of {args.repeat} runs, {args.payload}-byte payload"
    )
    print_table(headers, rows)
    bare_got = min(taken["bare", "autocommit"])
    print(f"bare {bare}: one loop per run, shown on both rows; the worker got {bare_got:,} (min)")
    # The block's commit with signalbus less the same commit without: the hand-off alone.
    with_events, without = median(commits["signalbus"]), median(commits["save"])
    handoff = args.count / (with_events - without)
    print(
        f"the commit of one atomic block of {args.count:,} saves handed its events to the"
        f" broker at {fmt(handoff)}/s, {handoff / bare_rate:.2f}x the bare {bare} loop"
        f" ({with_events * 1e3:.1f} ms for the commit, {without * 1e3:.1f} ms of it the"
        " database's)\n"
    )


def run_parent(args: argparse.Namespace) -> int:
    print_machine()
    with (
        fresh_broker(args.broker) as url,
        tempfile.TemporaryDirectory(prefix="signalbus-bench-") as tmp,
        Children() as children,
    ):
        env = bench_env(Path(tmp), url)
        migrate(env)
        worker = start_worker(children, env, Path(tmp) / "worker.log")
        window = CpuWindow([worker.pid])
        rates, commits, taken = measure_all(children, env, worker, args)
        window.mark()
    print_results(rates, commits, taken, args)
    worker_cpu, ours, others = window.percent()
    print(
        f"CPU over {window.seconds:.0f} s, % of one core: worker {worker_cpu:.0f}, "
        f"benchmark processes {ours:.0f}, other processes on the machine {others:.0f}"
    )
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.publish_rate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--broker", choices=BROKERS, default="zmq", help="default zmq")
    parser.add_argument("--count", type=int, default=10_000, help="timed saves per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant (median shown)")
    parser.add_argument("--payload", type=int, default=100, help="bytes of Tick.payload")
    parser.add_argument("--timeout", type=float, default=120, help="seconds allowed per run")
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, default="autocommit", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_on_sigterm()
    try:
        return run_child(args) if args.child else run_parent(args)
    except KeyboardInterrupt:
        if not args.child:
            print("interrupted: every process started was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
