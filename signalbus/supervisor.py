"""``signalbus worker --workers N``: one supervising process, N worker processes.

The supervisor binds the listening socket once and starts N children, each
running the ordinary `signalbus.worker.Worker` on that socket with a broker
consumer of its own; the kernel gives each new connection to whichever child
accepts it first. Nothing is shared between the children: each has its own hub,
replay buffer, ``/healthz``, ``/readyz`` and ``/metrics``. With AMQP each child
declares its own queue; with 0MQ the supervisor runs the forwarder
(`brokers.zeromq_forwarder`) on the broker address and the children connect to it.

Deliberate choices:

- *spawn*, not fork. A child is a fresh interpreter that sets Django up from the
  same settings module and builds its own broker: no pika connection, 0MQ
  context, lock or thread of the supervisor (the forwarder runs in one) can
  cross into it. Forking would copy a process that already runs that thread, at
  every restart. The cost is a second or so of imports per start.
- Ctrl-C in a terminal signals the whole process group. The children leave
  SIGINT to the supervisor: they are born ignoring it (the disposition survives
  exec) and block it from their first line, so no child dies of a
  KeyboardInterrupt mid-import. The supervisor answers SIGINT and SIGTERM alike:
  SIGTERM to every child (which closes its streams and exits 0), SIGKILL to any
  still running after `STOP_GRACE` seconds, then exit 0. A second signal kills at once.
- A child that dies is logged with its exit status and started again after a
  backoff: `BACKOFF_FIRST` seconds, doubled for each death in a row within
  `START_WINDOW` seconds of the start. The `MAX_START_FAILURES`-th such death (bad
  settings, an unreachable broker) makes the supervisor stop the others and give
  up with one line naming the child's error, instead of a restart loop.
- A child whose supervisor is gone (SIGKILL) stops itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from .conf import mask_url
from .errors import ConfigurationError, SignalbusError

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    from brokers.base import Broker

    from .worker import Worker

__all__ = ["ChildSpec", "Supervisor", "supervise"]

logger = logging.getLogger("signalbus.supervisor")

STOP_GRACE = 4.0  # seconds the children get to stop (the worker's own grace is 3 s)
START_WINDOW = 10.0
MAX_START_FAILURES = 3
BACKOFF_FIRST = 0.25


@dataclass(frozen=True)
class ChildSpec:
    """What a child needs to build its `Worker`; pickled to it."""

    broker_url: str
    host: str
    port: int
    patterns: tuple[str, ...]
    http: bool
    log_level: str
    forwarder: str | None = None  # the 0MQ forwarder's endpoint


def supervise(worker: Worker, count: int, *, log_level: str = "info") -> int:
    """Run ``count`` processes of ``worker`` (built, not run, by the command line) until
    Ctrl-C or SIGTERM; the exit status. One-line errors before any child starts."""
    scheme = _check(worker, count)
    spec = ChildSpec(
        broker_url=worker.broker_url,
        host=worker.host,
        port=worker.port,
        patterns=worker.patterns,
        http=worker.http,
        log_level=log_level,
    )
    with contextlib.ExitStack() as stack:
        sock = None
        if worker.http:
            from .worker import bind_socket

            sock = bind_socket(worker.host, worker.port)
            stack.callback(sock.close)
        if scheme == "zmq":
            from brokers.zeromq_forwarder import ZeroMQForwarder

            forwarder = ZeroMQForwarder(worker.broker_url)
            stack.callback(forwarder.close)
            spec = dataclasses.replace(spec, forwarder=forwarder.start())
        where = f"http://{worker.host}:{worker.port}/events" if worker.http else "no HTTP"
        logger.info(
            "signalbus supervisor (pid %d): %d worker processes, %s, broker %s",
            os.getpid(),
            count,
            where,
            mask_url(worker.broker_url),
        )
        return Supervisor(spec, count, sock).run()


def _check(worker: Worker, count: int) -> str:
    """What rules out several processes, said before anything is bound; the broker's scheme."""
    from brokers.registry import open_broker

    broker = open_broker(worker.broker_url)  # a bad URL is one line here, not N failed starts
    broker.close()
    scheme = broker.scheme
    if scheme == "memory":
        raise ConfigurationError(
            f"--workers {count} needs a broker processes share; memory:// reaches one process"
            " only: use zmq:// or amqp://"
        )
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        raise ConfigurationError(
            f"--workers {count} needs a settings module (--settings or DJANGO_SETTINGS_MODULE)"
        )
    if scheme == "zmq":
        from .subscribers import discover

        if discover(worker.settings.subscribers):
            raise ConfigurationError(
                f"--workers {count} on 0MQ would run each @signalbus.subscriber function once per"
                " event in every worker process; use amqp:// (a queue shared by the processes)"
                " or --workers 1"
            )
    return scheme


@dataclass
class _Slot:
    """One of the N places a child runs in, across its restarts."""

    number: int
    process: BaseProcess | None = None
    reports: Connection | None = None  # the child's one-line error, if it has one
    started: float = 0.0
    failures: int = 0  # deaths within START_WINDOW of the start, in a row
    due: float | None = None  # when to start it again


class Supervisor:
    """Starts, watches, restarts and stops the children; `run` returns the exit status."""

    def __init__(self, spec: ChildSpec, count: int, sock: socket.socket | None) -> None:
        self.spec = spec
        self.sock = sock
        self.slots = [_Slot(number) for number in range(1, count + 1)]
        self._context = multiprocessing.get_context("spawn")
        self._stopping = False
        self._hurry = False
        self._wake_r, self._wake_w = socket.socketpair()

    def run(self) -> int:
        with self._signals():
            try:
                for slot in self.slots:
                    if not self._stopping:
                        self._start(slot)
                while not self._stopping:
                    self._wait(
                        [s.process.sentinel for s in self.slots if s.process], self._timeout()
                    )
                    self._reap()
                    self._start_due()
            finally:
                self._stop_children()
        return 0

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        self._wake_w.setblocking(False)
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        try:
            yield
        finally:
            signal.set_wakeup_fd(wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._wake_r.close()
            self._wake_w.close()

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._hurry = self._stopping
        self._stopping = True

    def _wait(self, sentinels: list[int], timeout: float | None) -> None:
        """Until a child ends, a signal arrives, or ``timeout`` passes."""
        ready = multiprocessing.connection.wait([self._wake_r, *sentinels], timeout)
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                self._wake_r.recv(4096, socket.MSG_DONTWAIT)

    def _timeout(self) -> float | None:
        dues = [slot.due for slot in self.slots if slot.due is not None]
        return max(0.0, min(dues) - time.monotonic()) if dues else None

    def _start(self, slot: _Slot) -> None:
        reports, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=run_child,
            args=(self.spec, slot.number, self.sock, writer),
            name=f"signalbus-worker-{slot.number}",
            daemon=True,  # a safety net: multiprocessing ends daemons when we exit
        )
        with _children_ignore_sigint():
            process.start()
        writer.close()
        slot.process, slot.reports = process, reports
        slot.started, slot.due = time.monotonic(), None
        logger.info("worker process %d started (pid %s)", slot.number, process.pid)

    def _reap(self) -> None:
        """Log each child that died and schedule its restart, or give up."""
        for slot in self.slots:
            process = slot.process
            if process is None or process.is_alive() or self._stopping:
                continue
            now = time.monotonic()
            early = now - slot.started < START_WINDOW
            slot.failures = slot.failures + 1 if early else 0
            status = describe_exit(process.exitcode)
            reason = _report(slot)
            slot.process = None
            if slot.failures >= MAX_START_FAILURES:
                raise SignalbusError(
                    f"worker process {slot.number} died {slot.failures} times within"
                    f" {START_WINDOW:g} s of its start ({reason or status}); giving up"
                )
            delay = BACKOFF_FIRST * 2**slot.failures
            slot.due = now + delay
            logger.error(
                "worker process %d (pid %s) died after %.1f s: %s%s; restarting in %g s",
                slot.number,
                process.pid,
                now - slot.started,
                status,
                f" ({reason})" if reason else "",
                delay,
            )

    def _start_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if not self._stopping and slot.due is not None and slot.due <= now:
                self._start(slot)

    def _stop_children(self) -> None:
        """SIGTERM to each child; SIGKILL to those still there after `STOP_GRACE` seconds
        (or at once on a second signal)."""
        live = [slot.process for slot in self.slots if slot.process is not None]
        for process in live:
            process.terminate()
        deadline = time.monotonic() + STOP_GRACE
        while live and not self._hurry and time.monotonic() < deadline:
            self._wait([p.sentinel for p in live], deadline - time.monotonic())
            live = [process for process in live if process.is_alive()]
        for process in live:
            logger.warning("worker pid %s did not stop in time; killed", process.pid)
            process.kill()
            process.join(1)
        for slot in self.slots:
            if slot.reports is not None:
                slot.reports.close()


def describe_exit(code: int | None) -> str:
    """``exit status 1``, ``killed by SIGKILL (status -9)``."""
    if code is None or code >= 0:
        return f"exit status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"killed by {name} (status {code})"


def _report(slot: _Slot) -> str:
    """The one-line error the child sent before it died, if any."""
    reports, slot.reports = slot.reports, None
    if reports is None:
        return ""
    try:
        return str(reports.recv()) if reports.poll() else ""
    except (EOFError, OSError):
        return ""
    finally:
        reports.close()


@contextlib.contextmanager
def _children_ignore_sigint() -> Iterator[None]:
    """SIGINT ignored while a child is started, so that it is born ignoring it; blocked
    meanwhile here, so that a Ctrl-C in that moment still reaches the supervisor."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


# -- in the child ---------------------------------------------------------------------------


def run_child(spec: ChildSpec, number: int, sock: socket.socket | None, report: Connection) -> None:
    """A child's whole life: `Worker.run` on the supervisor's socket; exits with its status."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # the supervisor's to answer
    _stop_when_orphaned()
    logging.basicConfig(
        level=getattr(logging, spec.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )
    try:
        status = _serve(spec, sock)
    except SignalbusError as exc:
        report.send(str(exc))  # the supervisor logs it, with the exit status
        status = 1
    except Exception as exc:
        logger.exception("worker process %d failed", number)
        report.send(f"unexpected {type(exc).__name__}: {exc}")
        status = 1
    finally:
        report.close()
    sys.exit(status)


def _serve(spec: ChildSpec, sock: socket.socket | None) -> int:
    import django

    django.setup()  # DJANGO_SETTINGS_MODULE, and sys.path, are the supervisor's

    from .conf import get_settings
    from .worker import Worker

    return Worker(
        broker_url=spec.broker_url,
        settings=get_settings(),
        host=spec.host,
        port=spec.port,
        patterns=spec.patterns,
        http=spec.http,
        sock=sock,
        broker=_broker(spec),
    ).run()


def _broker(spec: ChildSpec) -> Broker | None:
    """With 0MQ, a broker whose consumer connects to the forwarder; else the worker's own."""
    if spec.forwarder is None:
        return None
    from brokers.zeromq import ZeroMQBroker

    return ZeroMQBroker(spec.broker_url, forwarder=spec.forwarder)


def _stop_when_orphaned() -> None:
    """SIGTERM to this child (a clean stop) once its supervisor is gone, however it went."""
    parent: Any = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="signalbus-orphan-watch", daemon=True).start()
