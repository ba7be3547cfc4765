"""``signalbus worker --workers N``, run as a user runs it: real processes, sockets and clients.

Which worker process served a stream is read from ``/metrics``: each process names
itself in ``signalbus_worker_info{pid=...}`` and counts its open streams, and each
scrape (a new connection) reaches one of them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from brokers.zeromq import ZeroMQBroker
from tests.helpers import (
    HOST,
    ROOT,
    SSEReader,
    WorkerProcess,
    child_env,
    events_url,
    free_port,
    send,
    wait_for,
)
from tests.rabbitmq import AMQP_URL

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")

TWO = ("--workers", "2")
CLIENTS = 20
STOP_WITHIN = 5.0  # seconds, open streams included


def scrape(worker: WorkerProcess) -> dict[str, float]:
    """One ``/metrics`` answer, from whichever process accepted the connection."""
    text = httpx.get(worker.url + "/metrics", timeout=5).text
    pid = re.search(r'^signalbus_worker_info\{pid="(\d+)"\} 1\.0$', text, re.M)
    assert pid is not None, text
    figures = {"pid": float(pid.group(1))}
    for name in ("signalbus_sse_streams", "signalbus_broker_ready"):
        value = re.search(rf"^{name} (\S+)$", text, re.M)
        assert value is not None, text
        figures[name] = float(value.group(1))
    return figures


def processes(worker: WorkerProcess, count: int = 2, timeout: float = 30) -> dict[int, Any]:
    """Scrape until ``count`` ready processes answered; the last figures of each, by pid."""
    seen: dict[int, dict[str, float]] = {}

    def enough() -> bool:
        figures = scrape(worker)
        seen[int(figures["pid"])] = figures
        ready = [pid for pid, f in seen.items() if f["signalbus_broker_ready"] == 1]
        return len(ready) >= count

    wait_for(enough, timeout=timeout)
    assert len(seen) == count, seen
    return seen


def streams_by_pid(worker: WorkerProcess, expected: int) -> dict[int, float]:
    """Open streams per process, once the processes together report ``expected``."""
    result: dict[int, float] = {}

    def counted() -> bool:
        result.clear()
        result.update({pid: f["signalbus_sse_streams"] for pid, f in processes(worker).items()})
        return sum(result.values()) == expected

    wait_for(counted, timeout=20)
    return result


def children(pid: int) -> set[int]:
    """The processes whose parent is ``pid``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _stat(entry.name)[1:2] == [str(pid)]:
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    return _stat(str(pid))[:1] not in ([], ["Z"])


def _stat(pid: str) -> list[str]:
    """State and parent pid of a process, [] when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text.rsplit(")", 1)[1].split()[:2]


@contextlib.contextmanager
def readers_on_every_process(
    worker: WorkerProcess, count: int = CLIENTS
) -> Iterator[list[SSEReader]]:
    """``count`` SSE clients, and more until each process serves some of them (the kernel
    picks the process that accepts a connection); all closed on exit."""
    readers: list[SSEReader] = []
    try:
        while len(readers) < count or (
            min(streams_by_pid(worker, len(readers)).values()) == 0 and len(readers) < 4 * count
        ):
            readers.append(SSEReader(events_url(worker, "public.#")))
        by_pid = streams_by_pid(worker, len(readers))
        assert len(by_pid) == 2
        assert all(streams > 0 for streams in by_pid.values()), by_pid
        yield readers
    finally:
        for reader in readers:
            reader.close()


def assert_each_got_once(readers: list[SSEReader], event_id: str) -> None:
    for reader in readers:
        assert reader.get(timeout=10).id == event_id
    for reader in readers:
        reader.assert_quiet(0.2)


def test_two_processes_on_0mq_serve_the_clients_and_each_gets_every_event_once(worker_factory):
    worker = worker_factory(args=TWO).start()
    with readers_on_every_process(worker) as readers:
        publisher = ZeroMQBroker(worker.broker_url, connect_timeout=5)
        event = send(publisher, "public.invoice.7.paid", {"amount": "12.50"})
        publisher.close()
        assert_each_got_once(readers, event.id)
    assert worker.stop() == 0


def test_a_short_lived_publishing_process_delivers_through_the_forwarder(worker_factory):
    worker = worker_factory(args=TWO).start()
    with readers_on_every_process(worker, count=10) as readers:
        # Its first send waits for a subscription, which comes up through the forwarder.
        done = subprocess.run(
            [sys.executable, "-m", "signalbus", "publish", "public.order.1.created"],
            env=child_env(SIGNALBUS_BROKER_URL=worker.broker_url),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        assert_each_got_once(readers, done.stdout.strip())


@pytest.mark.amqp
def test_two_processes_on_amqp_serve_the_clients_and_each_gets_every_event_once(
    worker_factory, exchange
):
    from brokers.amqp import AMQPBroker

    worker = worker_factory(broker_url=f"{AMQP_URL}?exchange={exchange}", args=TWO).start()
    with readers_on_every_process(worker) as readers:
        publisher = AMQPBroker(AMQP_URL, exchange=exchange, publish_timeout=5)
        event = send(publisher, "public.invoice.8.paid")
        publisher.close()
        assert_each_got_once(readers, event.id)
    assert worker.stop() == 0


@pytest.mark.parametrize(
    ("sig", "group"),
    [(signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["sigterm-to-the-supervisor", "ctrl-c-to-the-process-group"],
)
def test_a_signal_stops_every_process_and_exits_0_within_5_s(worker_factory, sig, group):
    worker = worker_factory(args=TWO, new_session=group).start()
    assert worker.proc is not None
    with readers_on_every_process(worker, count=4) as readers:
        family = children(worker.proc.pid) | {worker.proc.pid}
        assert len(family) >= 3  # the supervisor and its two worker processes
        started = time.monotonic()
        if group:  # what a terminal does on Ctrl-C
            os.killpg(worker.proc.pid, sig)
        else:
            worker.proc.send_signal(sig)
        assert worker.proc.wait(STOP_WITHIN) == 0
        wait_for(lambda: not any(alive(pid) for pid in family), timeout=STOP_WITHIN)
        assert time.monotonic() - started < STOP_WITHIN
        for reader in readers:
            assert reader.ended.wait(1)  # the streams were closed, not left hanging
    log = worker.log()
    assert "Traceback" not in log
    assert "KeyboardInterrupt" not in log


def test_ctrl_c_while_a_worker_process_is_still_starting_is_quiet(worker_factory):
    worker = worker_factory(args=TWO, new_session=True).start()
    assert worker.proc is not None
    os.kill(min(processes(worker)), signal.SIGKILL)
    # The replacement is started: Ctrl-C reaches it mid-import, before any handler of ours.
    wait_for(lambda: worker.log().count(" started (pid ") == 3, interval=0.005)
    time.sleep(0.3)
    os.killpg(worker.proc.pid, signal.SIGINT)
    assert worker.proc.wait(STOP_WITHIN) == 0
    log = worker.log()
    assert "Traceback" not in log
    assert "KeyboardInterrupt" not in log


def test_the_worker_processes_stop_by_themselves_when_the_supervisor_is_killed(worker_factory):
    # A killed supervisor leaves its forwarder's directory behind: in one of ours (short, for
    # the length limit of an ipc:// path).
    temporary = tempfile.mkdtemp(prefix="sbt-")
    try:
        worker = worker_factory(args=TWO, env={"TMPDIR": temporary}).start()
        assert worker.proc is not None
        pids = set(processes(worker))
        assert pids <= children(worker.proc.pid)
        worker.proc.kill()
        worker.proc.wait(5)
        wait_for(lambda: not any(alive(pid) for pid in pids), timeout=STOP_WITHIN)
    finally:
        shutil.rmtree(temporary)


def test_a_killed_worker_process_is_replaced_and_streams_work_again(worker_factory):
    worker = worker_factory(args=TWO).start()
    before = processes(worker).keys()
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: not alive(victim))
    now = processes(worker).keys()
    assert victim not in now
    assert len(now - before) == 1  # the replacement
    assert f"(pid {victim}) died after" in worker.log()
    assert "killed by SIGKILL (status -9); restarting in" in worker.log()
    with readers_on_every_process(worker, count=10) as readers:  # the replacement serves some
        publisher = ZeroMQBroker(worker.broker_url, connect_timeout=5)
        event = send(publisher, "public.after.kill")
        publisher.close()
        assert_each_got_once(readers, event.id)
    assert worker.stop() == 0


def test_worker_processes_that_keep_dying_at_start_make_the_supervisor_give_up():
    # Nothing listens there: every worker process fails at its start, as with bad settings.
    broker = f"amqp://guest:guest@{HOST}:{free_port()}/"
    command = ("worker", "--settings", "tests.project.settings", "--port", str(free_port()))
    done = subprocess.run(
        [sys.executable, "-m", "signalbus", *command, "--broker", broker, *TWO],
        env=child_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "restarting in" in done.stderr  # it tried again before it gave up
    last = done.stderr.splitlines()[-1]
    assert last.startswith("signalbus: error: worker process "), done.stderr
    assert "giving up" in last
    assert "cannot reach broker amqp://guest:**@" in last
