"""What both benchmarks share: the machine's description, processes stopped by PID,
the worker subprocess, figures read from /proc, and the printed tables."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import multiprocessing.process
import os
import platform
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
SETTINGS = "benchmarks.benchproject.settings"
STOP_GRACE = 5.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

Child = subprocess.Popen[bytes] | multiprocessing.process.BaseProcess


# -- the machine ------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    """The checkout measured: its commit, and whether files differ from it."""
    try:
        head = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, timeout=10
            )
            .stdout.decode()
            .strip()
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "not a git checkout"
    return f"commit {head or '?'}{' + uncommitted changes' if dirty else ''}"


def machine() -> list[tuple[str, str]]:
    """What the figures depend on: CPU, cores, kernel, Python and the libraries."""
    import zmq

    return [
        ("date", dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("CPU", _cpu_model()),
        ("cores", f"{os.cpu_count()} (usable: {len(os.sched_getaffinity(0))})"),
        ("kernel", platform.release()),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("signalbus", f"{_version('signalbus')} ({_git_commit()})"),
        ("django", _version("django")),
        ("pyzmq", f"{_version('pyzmq')} (libzmq {zmq.zmq_version()})"),
        ("uvicorn", _version("uvicorn")),
        ("uvloop", _version("uvloop")),
        ("starlette", _version("starlette")),
        ("pika", _version("pika")),
        ("load average", loadavg()),
    ]


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine skews every figure."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def print_machine() -> None:
    print_table(["machine", ""], [list(row) for row in machine()])


# -- tables -----------------------------------------------------------------------------------


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A Markdown table, columns aligned, numbers to the right."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |"

    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print(line(row))
    print(flush=True)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt(value: float, digits: int = 0) -> str:
    """A figure with thousands separators, or "-" when there is none."""
    if value != value:  # NaN
        return "-"
    return f"{value:,.{digits}f}"


# -- processes --------------------------------------------------------------------------------


def raise_on_sigterm() -> None:
    """SIGTERM behaves as Ctrl-C does: the ``finally`` blocks stop every child."""

    def on_sigterm(sig: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)


def raise_nofile() -> None:
    """1,000 clients need more descriptors than a soft limit of 1,024; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _alive(child: Child) -> bool:
    if isinstance(child, subprocess.Popen):
        return child.poll() is None
    return child.is_alive()


def _wait(child: Child, timeout: float) -> bool:
    if isinstance(child, subprocess.Popen):
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout)
    else:
        child.join(timeout)
    return not _alive(child)


def stop(child: Child, grace: float = STOP_GRACE) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds: by PID, this child only."""
    if child.pid is None or not _alive(child):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(child.pid, signal.SIGTERM)
    if not _wait(child, grace):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        _wait(child, grace)


class Children:
    """Every process a benchmark started; all stopped on leaving, newest first."""

    def __init__(self) -> None:
        self.started: list[Child] = []

    def add(self, child: Child) -> Child:
        self.started.append(child)
        return child

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        while self.started:
            stop(self.started.pop())


def bench_env(db_dir: Path, broker_url: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "BENCH_DB_DIR": str(db_dir), "SIGNALBUS_BROKER_URL": broker_url}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(extra)
    return env


def migrate(env: dict[str, str]) -> None:
    """Create the ``bench_tick`` table in the run's database (the app has no migrations)."""
    argv = [sys.executable, "-m", "django", "migrate", "--run-syncdb", "-v", "0"]
    subprocess.run([*argv, "--settings", SETTINGS], env=env, cwd=ROOT, check=True, timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# -- the broker -------------------------------------------------------------------------------

AMQP_URL = f"amqp://guest:guest@{HOST}:5672/%2F"
BROKERS = ("zmq", "amqp")


@contextlib.contextmanager
def fresh_broker(broker: str) -> Iterator[str]:
    """A URL of its own for one run: a free 0MQ port, or a fresh RabbitMQ exchange
    (``bench-<random>``), deleted on leaving, once the run's processes are stopped."""
    if broker == "zmq":
        yield f"zmq://{HOST}:{free_port()}"
        return
    import pika

    exchange = f"bench-{uuid.uuid4().hex[:12]}"
    admin = pika.BlockingConnection(pika.URLParameters(AMQP_URL))  # RabbitMQ is up
    version = admin._impl.server_properties.get("version", "?")  # bytes or str by pika version
    admin.close()
    version = version.decode() if isinstance(version, bytes) else version
    print(f"RabbitMQ {version} at {AMQP_URL}, exchange {exchange}\n", flush=True)
    try:
        yield f"{AMQP_URL}?exchange={exchange}"
    finally:
        admin = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        admin.channel().exchange_delete(exchange)
        admin.close()


# -- the worker -------------------------------------------------------------------------------


@dataclass
class Worker:
    """``python -m signalbus worker`` on 127.0.0.1, started by a benchmark."""

    proc: subprocess.Popen[bytes]
    url: str
    broker_url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_worker(children: Children, env: dict[str, str], log: Path, timeout: float = 30) -> Worker:
    """Start a worker on a free port, consuming ``env``'s broker URL; wait until ready."""
    port = free_port()
    broker_url = env["SIGNALBUS_BROKER_URL"]
    argv = ["-m", "signalbus", "worker", "--settings", SETTINGS, "--log-level", "warning"]
    argv += ["--host", HOST, "--port", str(port), "--broker", broker_url]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, *argv], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT
        )
    children.add(proc)
    worker = Worker(proc, f"http://{HOST}:{port}", broker_url, log)
    deadline = time.monotonic() + timeout
    while not _ready(worker):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"worker not ready (exit status {proc.poll()}):\n{tail}")
        time.sleep(0.1)
    return worker


def http_get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body


def _ready(worker: Worker) -> bool:
    try:
        return http_get(worker.url + "/readyz", timeout=1).startswith(b"{")
    except (urllib.error.URLError, OSError):
        return False


def events_received(worker: Worker) -> int:
    """The worker's ``signalbus_events_received`` counter, from ``/metrics``."""
    text = http_get(worker.url + "/metrics").decode()
    found = re.search(r"^signalbus_events_received(?:_total)? ([0-9.e+]+)$", text, re.M)
    return int(float(found.group(1))) if found else -1


def wait_received(worker: Worker, expected: int, timeout: float = 20) -> int:
    """Wait until the worker has taken ``expected`` events in, or its count stops moving."""
    deadline = time.monotonic() + timeout
    last, still_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = events_received(worker)
        if count >= expected:
            return count
        if count != last:
            last, still_since = count, time.monotonic()
        elif time.monotonic() - still_since > 2:
            break
        time.sleep(0.05)
    return last


# -- /proc ------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its threads included), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kb(pid: int, field: str = "VmRSS") -> int:
    """A line of /proc/PID/status in KB: ``VmRSS`` now, ``VmHWM`` the peak."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def machine_busy_seconds() -> float:
    """CPU time spent by the whole machine (every core, every process), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def own_cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended."""
    me, ended = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + ended.ru_utime + ended.ru_stime


class CpuWindow:
    """CPU % of one core from its start to the last `mark`: of each live process in ``pids``,
    then of this process with its ended children, then of everything else on the machine
    (other work there skews every figure)."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.start = self.last = self._now()

    def _now(self) -> tuple[float, list[float]]:
        ours = [cpu_seconds(pid) for pid in self.pids] + [own_cpu_seconds()]
        return time.monotonic(), [*ours, machine_busy_seconds() - sum(ours)]

    def mark(self) -> None:
        self.last = self._now()

    @property
    def seconds(self) -> float:
        return self.last[0] - self.start[0]

    def percent(self) -> list[float]:
        wall = max(self.seconds, 1e-9)
        return [100 * (b - a) / wall for a, b in zip(self.start[1], self.last[1], strict=True)]
