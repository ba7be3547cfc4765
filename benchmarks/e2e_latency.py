"""Commit-to-SSE-client latency with N connected clients at a paced event rate.

    python -m benchmarks.e2e_latency [--clients 100,1000] [--rate 100] [--duration 10]
                                     [--broker zmq|amqp]

For each N (and each of ``--repeat`` runs) a fresh worker (``python -m
signalbus worker``) is started; a load-generator process (`benchmarks.loadgen`)
opens N ``GET /events?topic=bench.#`` streams; this process is the Django
publisher: it saves ``rate x duration`` Tick rows at the paced rate, each in
autocommit, each payload carrying ``time.time_ns()`` read just before
``save()``. Latency is the client's arrival time minus that stamp, so it
includes the INSERT and its commit, the event built and sent on commit, the
broker (0MQ, or RabbitMQ on a fresh exchange, deleted after, the publisher
waiting for each confirm), the worker and the SSE write. The table shows
medians over ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from . import loadgen
from .common import (
    BROKERS,
    HOST,
    SETTINGS,
    Children,
    CpuWindow,
    Worker,
    bench_env,
    fmt,
    fresh_broker,
    median,
    memory_kb,
    migrate,
    print_machine,
    print_table,
    raise_nofile,
    raise_on_sigterm,
    start_worker,
)

TOPIC = "bench.%23"  # bench.#, URL-encoded
WARMUP_INTERVAL = 0.3


@dataclass
class Result:
    clients: int
    connected: int
    events: int
    figures: dict[str, float]


def call(conn: Connection, *message: object, timeout: float = 60) -> Any:
    """One command to the load generator, one reply."""
    conn.send(message)
    if not conn.poll(timeout):
        raise TimeoutError(f"the load generator did not answer {message[0]!r} in {timeout} s")
    return conn.recv()


def start_loadgen(children: Children, worker: Worker, clients: int) -> tuple[int, Connection]:
    context = mp.get_context("spawn")
    parent, child = context.Pipe()
    port = int(worker.url.rsplit(":", 1)[1])
    target = f"/events?topic={TOPIC}"
    proc = context.Process(
        target=loadgen.main, args=(child, HOST, port, target, clients), daemon=True
    )
    proc.start()
    children.add(proc)
    assert proc.pid is not None
    return proc.pid, parent


def publish(run: int, seq: int, size: int) -> None:
    """Save one Tick in autocommit; its stamp is read just before ``save()``."""
    from benchmarks.benchproject.bench.models import Tick

    stamp = time.time_ns()
    Tick(payload=f"r={run} s={seq} t={stamp} " + "x" * size).save()


def publish_paced(run: int, count: int, rate: float, size: int) -> float:
    """Publish ``count`` events at ``rate`` per second; the rate actually reached."""
    start = time.monotonic()
    for seq in range(count):
        delay = start + seq / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        publish(run, seq, size)
    elapsed = time.monotonic() - start
    return count / elapsed if elapsed > 0 else float("nan")


def warm_up(conn: Connection, size: int, timeout: float) -> dict[str, Any]:
    """Publish warm-up events until every open client has received one (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    seq = 0
    while True:
        status: dict[str, Any] = call(conn, "status")
        if status["warm"] >= status["open"] or time.monotonic() > deadline:
            return status
        publish(0, seq, size)
        seq += 1
        time.sleep(WARMUP_INTERVAL)


def drain(conn: Connection, expected: int, window: CpuWindow, args: argparse.Namespace) -> None:
    """Wait until every delivery arrived, or none arrived for ``--drain-timeout`` seconds."""
    deadline = time.monotonic() + args.max_wait
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        received = call(conn, "status")["received"]
        if received != last:
            last, since = received, time.monotonic()
            window.mark()
        if received >= expected or time.monotonic() - since > args.drain_timeout:
            return
        time.sleep(0.05)


def connect_clients(
    children: Children, worker: Worker, clients: int, args: argparse.Namespace
) -> tuple[int, Connection, dict[str, Any]]:
    """The load generator with its clients open and subscribed; its pid, pipe and status."""
    pid, conn = start_loadgen(children, worker, clients)
    opened = call(conn, "connect", timeout=60 + clients / 20)
    if opened["failed"]:
        print(f"  {opened['failed']} of {clients} clients could not connect", file=sys.stderr)
    status = warm_up(conn, args.payload, timeout=20 + clients / 50)
    if status["warm"] < status["open"]:
        print(f"  only {status['warm']} of {status['open']} clients subscribed", file=sys.stderr)
    return pid, conn, status


def measure(run: int, clients: int, env: dict[str, str], args: argparse.Namespace) -> Result:
    """One run: a fresh worker, ``clients`` streams, ``rate x duration`` events."""
    events = max(1, round(args.rate * args.duration))
    with Children() as children:
        worker = start_worker(children, env, Path(env["BENCH_DB_DIR"]) / f"worker-{run}.log")
        print(f"  run {run}: worker pid {worker.pid}, {clients} clients", file=sys.stderr)
        rss_before = memory_kb(worker.pid)
        lg_pid, conn, status = connect_clients(children, worker, clients, args)
        time.sleep(1)  # let the worker settle before reading its idle memory
        idle_kb = (memory_kb(worker.pid) - rss_before) / max(1, status["open"])
        call(conn, "begin", run)
        window = CpuWindow([worker.pid, lg_pid])
        pub_rate = publish_paced(run, events, args.rate, args.payload)
        window.mark()
        expected = status["warm"] * events
        drain(conn, expected, window, args)
        summary = call(conn, "end", timeout=120)
        figures = {"pub/s": pub_rate, **delivery_figures(summary, expected, window)}
        figures["peak RSS MB"] = memory_kb(worker.pid, "VmHWM") / 1024
        figures["idle KB/conn"] = idle_kb
        call(conn, "close", timeout=30)
    shown = ", ".join(f"{k} {fmt(v, 1)}" for k, v in figures.items())
    print(f"  run {run}: {shown}", file=sys.stderr)
    return Result(clients, status["warm"], events, figures)


def delivery_figures(summary: dict[str, Any], expected: int, window: CpuWindow) -> dict[str, float]:
    worker_cpu, loadgen_cpu, publisher_cpu, others = window.percent()
    return {
        "deliveries": summary["received"],
        "lost": expected - summary["received"],
        "dropped": summary["dropped"],
        **{k: summary[k] for k in ("p50", "p95", "p99", "max")},
        "deliv/s": summary["received"] / max(window.seconds, 1e-9),
        "events/write": summary["received"] / max(1, summary["writes"]),
        "worker CPU%": worker_cpu,
        "loadgen CPU%": loadgen_cpu,
        "publisher CPU%": publisher_cpu,
        "other CPU%": others,
    }


COLUMNS = [  # (figure, header, decimals)
    ("pub/s", "pub/s", 0),
    ("deliveries", "deliveries", 0),
    ("lost", "lost", 0),
    ("dropped", "dropped conns", 0),
    ("p50", "p50 ms", 1),
    ("p95", "p95 ms", 1),
    ("p99", "p99 ms", 1),
    ("max", "max ms", 1),
    ("deliv/s", "deliv/s", 0),
    ("events/write", "events/write", 2),
    ("worker CPU%", "worker CPU%", 0),
    ("loadgen CPU%", "loadgen CPU%", 0),
    ("publisher CPU%", "publisher CPU%", 0),
    ("other CPU%", "other CPU%", 0),
    ("peak RSS MB", "worker peak RSS MB", 1),
    ("idle KB/conn", "idle KB/conn", 1),
]


def print_results(results: list[Result], args: argparse.Namespace) -> None:
    rows = []
    for clients in dict.fromkeys(r.clients for r in results):
        runs = [r for r in results if r.clients == clients]
        head = [clients, min(r.connected for r in runs), fmt(args.rate), runs[0].events]
        rows.append(head + [fmt(median([r.figures[k] for r in runs]), d) for k, _, d in COLUMNS])
    print(
        f"end-to-end latency ({args.broker}): medians of {args.repeat} run(s); latency from "
        "time.time_ns() just before save() (autocommit) to the client's read"
    )
    headers = ["clients", "subscribed", "rate/s", "events", *(h for _, h, _ in COLUMNS)]
    print_table(headers, rows)


def run_parent(args: argparse.Namespace) -> int:
    raise_nofile()
    print_machine()
    with (
        fresh_broker(args.broker) as url,
        tempfile.TemporaryDirectory(prefix="signalbus-bench-") as tmp,
    ):
        env = bench_env(Path(tmp), url)
        migrate(env)
        # This process is the publisher: Django on the same database and broker.
        os.environ.update(BENCH_DB_DIR=tmp, SIGNALBUS_BROKER_URL=env["SIGNALBUS_BROKER_URL"])
        os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS
        import django

        django.setup()
        results: list[Result] = []
        for clients in args.clients:
            for _ in range(args.repeat):
                results.append(measure(len(results) + 1, clients, env, args))
    print_results(results, args)
    return 0


def client_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",")]
    if any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError("client counts are positive integers")
    return counts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.e2e_latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--broker", choices=BROKERS, default="zmq", help="default zmq")
    add("--clients", type=client_counts, default=[100], help="N, or a list: 100,1000")
    add("--rate", type=float, default=100, help="events per second (default 100)")
    add("--duration", type=float, default=10, help="seconds of publishing (default 10)")
    add("--repeat", type=int, default=1, help="runs per N; the table shows medians")
    add("--payload", type=int, default=100, help="bytes of padding in each payload")
    add("--drain-timeout", type=float, default=5, help="give up after this long without delivery")
    add("--max-wait", type=float, default=120, help="longest wait for deliveries after publishing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_on_sigterm()
    try:
        return run_parent(args)
    except KeyboardInterrupt:
        print("interrupted: every process started was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
