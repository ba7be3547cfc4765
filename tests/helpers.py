"""Real processes and real clients for the end-to-end tests."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Self

import anyio
import httpx
from httpx_sse import connect_sse

from signalbus.events import Event

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)


def child_env(**extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(extra)
    return env


class WorkerProcess:
    """``python -m signalbus worker`` on free ports, stopped by PID."""

    def __init__(
        self,
        tmp: Path,
        *,
        broker_url: str | None = None,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        new_session: bool = False,
    ) -> None:
        self.port = free_port()
        self.broker_url = broker_url or f"zmq://{HOST}:{free_port()}"
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = tmp / f"worker-{self.port}.log"
        self.env = child_env(**(env or {}))
        self.args = args
        self.new_session = new_session  # a process group of its own, as a terminal gives
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "signalbus",
            "worker",
            "--settings",
            "tests.project.settings",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--broker",
            self.broker_url,
            *self.args,
        ]

    def start(self, *, wait: bool = True) -> Self:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
                start_new_session=self.new_session,
            )
        return self.wait_ready() if wait else self

    def wait_ready(self) -> Self:
        wait_for(self._healthy, timeout=20)
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {self.proc.returncode}: {self.log()}")
        return self.ready()

    def ready(self) -> bool:
        try:
            return httpx.get(self.url + "/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()


class SSEReader:
    """An SSE client in a thread: httpx on a real socket, httpx-sse parsing the wire."""

    def __init__(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 10,
        status: int = 200,
    ) -> None:
        self.url = url
        self.headers = headers or {}
        self.events: queue.Queue[Any] = queue.Queue()
        self.connected = threading.Event()
        self.ended = threading.Event()
        self.status: int | None = None
        self.response_headers: httpx.Headers | None = None
        self.body: bytes = b""
        self.retry: int | None = None
        self._response: httpx.Response | None = None
        self._client = httpx.Client(timeout=httpx.Timeout(timeout, read=None))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self.connected.wait(timeout):
            raise TimeoutError(f"no response from {url}")
        if self.status != status:
            self.close()
            raise AssertionError(f"{url} answered {self.status}, not {status}: {self.body!r}")

    def _run(self) -> None:
        try:
            with connect_sse(self._client, "GET", self.url, headers=self.headers) as source:
                self._response = source.response
                self.status = source.response.status_code
                self.response_headers = source.response.headers
                if self.status != 200:
                    self.body = source.response.read()
                    self.connected.set()
                    return
                self.connected.set()
                for sse in source.iter_sse():
                    if sse.retry is not None:
                        self.retry = sse.retry
                    if sse.data:  # as a browser does: no data, no event dispatched
                        self.events.put(sse)
        except (httpx.HTTPError, RuntimeError, ValueError):
            pass
        finally:
            self.connected.set()
            self.ended.set()

    def get(self, timeout: float = 5) -> Any:
        return self.events.get(timeout=timeout)

    def take(self, count: int, timeout: float = 10) -> list[Any]:
        deadline = time.monotonic() + timeout
        return [
            self.events.get(timeout=max(0.01, deadline - time.monotonic())) for _ in range(count)
        ]

    def data(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        return [json.loads(sse.data) for sse in self.take(count, timeout)]

    def assert_quiet(self, seconds: float = 0.3) -> None:
        try:
            extra = self.events.get(timeout=seconds)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected event: {extra.data}")

    def close(self) -> None:
        """Hang up as a browser tab does: shut the socket, so the reader thread ends at once."""
        if self._response is not None and not self.ended.is_set():
            stream = self._response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(2)
        self._client.close()

    def __enter__(self) -> SSEReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def received(sock: socket.socket, deadline: float) -> Iterator[bytes]:
    """Each chunk ``sock`` receives until ``deadline`` (``time.monotonic()``) or the end."""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(max(0.01, left))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return
        if not chunk:
            return
        yield chunk


def raw_request(
    port: int, target: str, headers: str = "", read_for: float = 1.0, until: bytes | None = None
) -> bytes:
    """Send one GET by hand and return what the server wrote within ``read_for`` seconds."""
    with socket.create_connection((HOST, port), timeout=read_for) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\n{headers}\r\n".encode())
        data = b""
        for chunk in received(sock, time.monotonic() + read_for):
            data += chunk
            if until is not None and until in data:
                break
        return data


def stop_cleanly(worker: WorkerProcess, readers: list[SSEReader]) -> None:
    """Stop ``worker``: exit status 0 within 5 s, every reader's stream ended, no traceback."""
    started = time.monotonic()
    assert worker.stop() == 0
    assert time.monotonic() - started < 5
    for reader in readers:
        assert reader.ended.wait(2)
        reader.close()
    assert "Traceback" not in worker.log()


class RawStream:
    """One GET on a raw socket from ``source`` (every 127.x.y.z address is this host);
    ``data`` is every byte the worker wrote, framing included."""

    def __init__(
        self,
        port: int,
        target: str,
        *,
        source: str = HOST,
        headers: str = "",
        expect: int | None = 200,
    ) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=5, source_address=(source, 0))
        self.sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\n{headers}\r\n".encode())
        self.data = b""
        self.read_until(b"\r\n\r\n")
        self.status = status_of(self.data) if self.data else None
        if expect is not None:
            assert self.status == expect, self.data
        if self.status == 200:
            assert self.read_until(b"retry:"), self.data
        elif self.status is not None:  # an error: read its whole body
            head = self.data.partition(b"\r\n\r\n")[0].lower()
            length = int(head.partition(b"content-length: ")[2].split(b"\r")[0] or 0)
            deadline = time.monotonic() + 5
            while len(self.body()) < length and self._receive(deadline):
                pass

    def read_until(self, marker: bytes, timeout: float = 10) -> bool:
        deadline = time.monotonic() + timeout
        while marker not in self.data and self._receive(deadline):
            pass
        return marker in self.data

    def _receive(self, deadline: float) -> bool:
        """Add what arrives before ``deadline``; False at the deadline or the end."""
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return False
        self.data += chunk
        return bool(chunk) and time.monotonic() < deadline

    def body(self) -> bytes:
        return self.data.partition(b"\r\n\r\n")[2]

    def lines(self) -> list[bytes]:
        return [line.rstrip(b"\r") for line in self.body().split(b"\n")]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@asynccontextmanager
async def consuming(consumer: Any) -> AsyncIterator[Received]:
    """A started consumer running as a task on this loop, closed on exit."""
    await consumer.start()
    received = Received()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer.run, received.deliver)
            yield received
            tg.cancel_scope.cancel()
    finally:
        await consumer.aclose()


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


class Received:
    """What a consumer delivered, in order, as (topic, event); lives on the loop."""

    timeout = 10.0  # a generous bound for what should take milliseconds

    def __init__(self) -> None:
        self.items: list[tuple[str, Event]] = []
        self._arrived = anyio.Event()

    def deliver(self, topic: str, body: bytes) -> None:
        self.items.append((topic, Event.decode(body)))
        self._arrived.set()

    @property
    def topics(self) -> list[str]:
        return [topic for topic, _ in self.items]

    @property
    def ids(self) -> list[str]:
        return [event.id for _, event in self.items]

    async def wait_until(self, done: Callable[[], bool]) -> None:
        with anyio.fail_after(self.timeout):
            while not done():
                self._arrived = anyio.Event()
                await self._arrived.wait()

    async def wait_for(self, count: int) -> None:
        await self.wait_until(lambda: len(self.items) >= count)

    async def wait_for_topic(self, topic: str) -> None:
        await self.wait_until(lambda: topic in self.topics)


def send(broker: Any, topic: str, data: object = None, **kwargs: Any) -> Event:
    """Publish one new event straight to a broker (no Django transaction) and return it."""
    event = Event.create(topic, data, **kwargs)
    broker.publish(topic, event.encode())
    return event


def metric(worker: WorkerProcess, name: str) -> float:
    """One unlabelled figure of the worker's ``/metrics``."""
    for line in httpx.get(worker.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def events_url(worker: WorkerProcess, *patterns: str, **params: str) -> str:
    query = httpx.QueryParams([("topic", p) for p in patterns] + list(params.items()))
    return f"{worker.url}/events?{query}"


def reap(pid: int, timeout: float = 10.0) -> int:
    """The exit code of a forked child, killed if it takes longer than ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise TimeoutError(f"forked child {pid} did not exit within {timeout} s")
