"""Commit-to-SSE-client latency with N connected clients at a paced event rate.

    python -m benchmarks.e2e_latency [--clients 100,1000] [--rate 100] [--duration 10]
                                     [--broker zmq|amqp]

For each N (and each of ``--repeat`` runs) a fresh worker (``python -m
signalbus worker``) is started; ``--loadgens`` load-generator processes
(`benchmarks.loadgen`; default 1, where the peer harness has 2) open N ``GET
/events?topic=bench.#`` streams between them; this process is the Django
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
import array
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


class LoadGenerators:
    """The load-generator processes of a run, the clients split between them, driven as one."""

    def __init__(self, children: Children, worker: Worker, clients: int, count: int) -> None:
        context = mp.get_context("spawn")
        port = int(worker.url.rsplit(":", 1)[1])
        target = f"/events?topic={TOPIC}"
        self.pids: list[int] = []
        self.conns: list[Connection] = []
        for share in (clients // count + (i < clients % count) for i in range(count)):
            if not share:
                continue
            parent, child = context.Pipe()
            proc = context.Process(
                target=loadgen.main, args=(child, HOST, port, target, share), daemon=True
            )
            proc.start()
            children.add(proc)
            assert proc.pid is not None
            self.pids.append(proc.pid)
            self.conns.append(parent)

    def call(self, *message: object, timeout: float = 60) -> dict[str, Any]:
        """One command to every load generator at once; their replies' counts summed."""
        for conn in self.conns:
            conn.send(message)
        total: dict[str, Any] = {}
        for conn in self.conns:
            if not conn.poll(timeout):
                raise TimeoutError(f"a load generator did not answer {message[0]!r} in {timeout} s")
            reply = conn.recv()
            for key, value in reply.items() if isinstance(reply, dict) else ():
                total[key] = total[key] + value if key in total else value
        return total


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


def warm_up(loadgens: LoadGenerators, size: int, timeout: float) -> dict[str, Any]:
    """Publish warm-up events until every open client has received one (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    seq = 0
    while True:
        status = loadgens.call("status")
        if status["warm"] >= status["open"] or time.monotonic() > deadline:
            return status
        publish(0, seq, size)
        seq += 1
        time.sleep(WARMUP_INTERVAL)


def drain(
    loadgens: LoadGenerators, expected: int, window: CpuWindow, args: argparse.Namespace
) -> None:
    """Wait until every delivery arrived, or none arrived for ``--drain-timeout`` seconds."""
    deadline = time.monotonic() + args.max_wait
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        received = loadgens.call("status")["received"]
        if received != last:
            last, since = received, time.monotonic()
            window.mark()
        if received >= expected or time.monotonic() - since > args.drain_timeout:
            return
        time.sleep(0.05)


def connect_clients(
    children: Children, worker: Worker, clients: int, args: argparse.Namespace
) -> tuple[LoadGenerators, dict[str, Any]]:
    """The load generators with their clients open and subscribed, and their status."""
    loadgens = LoadGenerators(children, worker, clients, args.loadgens)
    opened = loadgens.call("connect", timeout=60 + clients / 20)
    if opened["failed"]:
        print(f"  {opened['failed']} of {clients} clients could not connect", file=sys.stderr)
    status = warm_up(loadgens, args.payload, timeout=20 + clients / 50)
    if status["warm"] < status["open"]:
        print(f"  only {status['warm']} of {status['open']} clients subscribed", file=sys.stderr)
    return loadgens, status


def measure(run: int, clients: int, env: dict[str, str], args: argparse.Namespace) -> Result:
    """One run: a fresh worker, ``clients`` streams, ``rate x duration`` events."""
    events = max(1, round(args.rate * args.duration))
    with Children() as children:
        worker = start_worker(children, env, Path(env["BENCH_DB_DIR"]) / f"worker-{run}.log")
        print(f"  run {run}: worker pid {worker.pid}, {clients} clients", file=sys.stderr)
        rss_before = memory_kb(worker.pid)
        loadgens, status = connect_clients(children, worker, clients, args)
        time.sleep(1)  # let the worker settle before reading its idle memory
        idle_kb = (memory_kb(worker.pid) - rss_before) / max(1, status["open"])
        loadgens.call("begin", run)
        window = CpuWindow([worker.pid, *loadgens.pids])
        pub_rate = publish_paced(run, events, args.rate, args.payload)
        window.mark()
        expected = status["warm"] * events
        drain(loadgens, expected, window, args)
        summary = loadgens.call("end", timeout=120)
        figures = {"pub/s": pub_rate, **delivery_figures(summary, expected, window)}
        figures["peak RSS MB"] = memory_kb(worker.pid, "VmHWM") / 1024
        figures["idle KB/conn"] = idle_kb
        loadgens.call("close", timeout=30)
    shown = ", ".join(f"{k} {fmt(v, 1)}" for k, v in figures.items())
    print(f"  run {run}: {shown}", file=sys.stderr)
    return Result(clients, status["warm"], events, figures)


def delivery_figures(summary: dict[str, Any], expected: int, window: CpuWindow) -> dict[str, float]:
    worker_cpu, *loadgen_cpus, publisher_cpu, others = window.percent()
    latencies = array.array("q")
    latencies.frombytes(summary["latencies"])  # every load generator's, joined by `call`
    ordered = sorted(latencies)

    def percentile(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6 if ordered else 0.0

    return {
        "deliveries": summary["received"],
        "lost": expected - summary["received"],
        "dropped": summary["dropped"],
        **{k: percentile(q) for k, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1))},
        "deliv/s": summary["received"] / max(window.seconds, 1e-9),
        "events/write": summary["received"] / max(1, summary["writes"]),
        "worker CPU%": worker_cpu,
        "loadgen CPU%": sum(loadgen_cpus),
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
        f"end-to-end latency ({args.broker}): medians of {args.repeat} run(s), "
        f"{args.loadgens} load generator(s); latency from "
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
    add("--loadgens", type=int, default=1, help="load-generator processes (default 1)")
    add("--payload", type=int, default=100, help="bytes of padding in each payload")
    add("--drain-timeout", type=float, default=5, help="give up after this long without delivery")
    add("--max-wait", type=float, default=120, help="longest wait for deliveries after publishing")
    args = parser.parse_args(argv)
    if args.loadgens < 1:
        parser.error("--loadgens is a positive integer")
    return args


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
