"""``signalbus demo`` end to end: the real command, its two children, a real HTTP client.

The demo runs as a subprocess on free ports, its SQLite file in a temporary
directory. A form post on the web app must reach an open SSE stream on the
worker through the 0MQ broker, and Ctrl-C must stop everything with status 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, contextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse

START_TIMEOUT = 90.0
EVENT_TIMEOUT = 10.0


def _free_ports(count: int) -> list[int]:
    """Distinct ports nobody listens on (held open together, so the kernel gives distinct ones)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class Demo:
    """A running ``python -m signalbus demo``, its output in files (no reader threads)."""

    def __init__(self, tmp_path: Path, web: int, worker: int, broker: int) -> None:
        self.web, self.worker, self.broker = web, worker, broker
        self.stdout = tmp_path / "demo.out"
        self.stderr = tmp_path / "demo.err"
        env = {k: v for k, v in os.environ.items() if k != "SIGNALBUS_BROKER_URL"}
        env["SIGNALBUS_DEMO_DIR"] = str(tmp_path / "data")
        command = [sys.executable, "-m", "signalbus", "demo", "--port", str(web)]
        command += ["--worker-port", str(worker), "--broker-port", str(broker)]
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env
            )

    def output(self) -> str:
        return self.stdout.read_text() + self.stderr.read_text()

    def wait_for(self, text: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stdout.read_text():
            if self.process.poll() is not None:
                pytest.fail(f"demo exited with {self.process.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"demo printed no {text!r} within {timeout} s:\n{self.output()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Leave nothing running whatever the test did: SIGTERM, then SIGKILL."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def running_demo(tmp_path: Path) -> Iterator[Demo]:
    demo = Demo(tmp_path, *_free_ports(3))
    try:
        demo.wait_for(f"open http://127.0.0.1:{demo.web}/")
        yield demo
    finally:
        demo.stop()


async def _next_event(messages: AsyncIterator[ServerSentEvent], type_: str) -> dict[str, Any]:
    """The next event of ``type_`` on the stream (other events are skipped)."""
    with anyio.fail_after(EVENT_TIMEOUT):
        async for message in messages:
            if not message.data:  # the opening "retry:" carries no event
                continue
            event: dict[str, Any] = json.loads(message.data)
            assert message.id == event["id"]
            if event["type"] == type_:
                return event
    raise AssertionError(f"the stream ended before an event of type {type_}")


def _csrf_token(page: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert match, "the page has no CSRF token"
    return match.group(1)


async def _check_snapshot(site: httpx.AsyncClient, title: str) -> None:
    """/items.json: the list, an ETag, ``no-cache``, and 304 for the same ETag."""
    first = await site.get("/items.json")
    assert first.status_code == 200
    assert first.headers["cache-control"] == "no-cache"
    assert [item["title"] for item in first.json()["items"]] == [title]
    etag = first.headers["etag"]
    again = await site.get("/items.json", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.headers["etag"] == etag
    assert again.content == b""


async def _exercise(demo: Demo) -> None:
    origin = f"http://127.0.0.1:{demo.web}"
    stream_url = f"http://127.0.0.1:{demo.worker}/events?topic=items.item.%23"
    timeout = httpx.Timeout(10.0, read=30.0)
    async with httpx.AsyncClient(base_url=origin, timeout=timeout) as site:
        page = await site.get("/")
        assert page.status_code == 200
        assert "EventSource" in page.text
        token = _csrf_token(page.text)

        async def post(path: str, **data: str) -> httpx.Response:
            return await site.post(path, data={"csrfmiddlewaretoken": token, **data})

        async with (
            httpx.AsyncClient(timeout=timeout) as client,
            aconnect_sse(client, "GET", stream_url, headers={"Origin": origin}) as source,
            aclosing(source.aiter_sse()) as messages,
        ):
            assert source.response.status_code == 200
            assert source.response.headers["access-control-allow-origin"] == origin
            assert source.response.headers["access-control-allow-credentials"] == "true"

            created_response = await post("/items/", title="buy milk")
            assert created_response.status_code == 303
            created = await _next_event(messages, "items.item.created")
            pk = created["data"]["id"]
            assert created_response.headers["location"] == f"/#item-{pk}"
            assert created["topic"] == f"items.item.{pk}.created"
            assert created["subject"] == f"/items/{pk}/"
            assert created["data"]["title"] == "buy milk"
            assert set(created["data"]) == {"id", "title", "done", "updated_at"}

            await post(f"/items/{pk}/", title="buy oat milk")
            updated = await _next_event(messages, "items.item.updated")
            assert updated["topic"] == f"items.item.{pk}.updated"
            assert updated["data"]["title"] == "buy oat milk"
            assert updated["data"]["updated_at"] > created["data"]["updated_at"]
            await _check_snapshot(site, "buy oat milk")

            await post(f"/items/{pk}/toggle/")
            toggled = await _next_event(messages, "items.item.updated")
            assert toggled["data"]["done"] is True

            # Ctrl-C with a browser still connected: the worker closes the stream.
            demo.process.send_signal(signal.SIGINT)
            with anyio.fail_after(EVENT_TIMEOUT), suppress(httpx.RemoteProtocolError):
                async for message in messages:
                    assert not message.data, f"unexpected event after Ctrl-C: {message.data}"


def test_a_form_post_reaches_the_open_event_stream_and_ctrl_c_stops_all(tmp_path: Path) -> None:
    with running_demo(tmp_path) as demo:
        anyio.run(_exercise, demo)
        assert demo.process.wait(10) == 0, demo.output()
        assert not _listening(demo.web)
        assert not _listening(demo.worker)
    assert "Traceback" not in demo.output()


@pytest.mark.parametrize("option", ["--port", "--worker-port", "--broker-port"])
def test_a_port_in_use_is_one_line_and_exit_1(tmp_path: Path, option: str) -> None:
    ports = dict(zip(["--port", "--worker-port", "--broker-port"], _free_ports(3), strict=True))
    command = [sys.executable, "-m", "signalbus", "demo"]
    for name, port in ports.items():
        command += [name, str(port)]
    env = {**os.environ, "SIGNALBUS_DEMO_DIR": str(tmp_path / "data")}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports[option]))
        taken.listen()
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=60, check=False
        )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"signalbus: error: port {ports[option]} is in use; pass {option}"
    ]
    assert done.stdout == ""
    others = [port for name, port in ports.items() if name != option]
    assert not any(_listening(port) for port in others)
