"""Headless Chromium driven over the DevTools protocol, for what only a real browser shows
(EventSource's own reconnects, CORS, cookies).

Without Chromium the tests that need it skip, saying so; under
``SIGNALBUS_REQUIRE_BROWSER=1`` (set by CI) they fail instead.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import wait_for

__all__ = ["Chromium", "chromium_or_skip"]


def chromium_or_skip() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    reason = "no Chromium on PATH (Debian: apt-get install chromium)"
    if os.environ.get("SIGNALBUS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, and SIGNALBUS_REQUIRE_BROWSER=1")
    pytest.skip(reason)


class Chromium:
    """One headless browser with one page; `evaluate` runs JavaScript in it."""

    def __init__(self, executable: str, profile: Path) -> None:
        from websockets.sync.client import connect

        profile.mkdir(parents=True, exist_ok=True)
        self.log_path = profile.parent / "chromium.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    executable,
                    "--headless=new",
                    "--no-sandbox",  # tests run as root in CI
                    "--disable-gpu",
                    "--no-first-run",
                    f"--user-data-dir={profile}",
                    "--remote-debugging-port=0",
                    "about:blank",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        active = profile / "DevToolsActivePort"
        wait_for(lambda: active.exists() and len(active.read_text().split()) == 2, timeout=30)
        port = active.read_text().split()[0]
        pages = [
            t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"
        ]
        self._stack = contextlib.ExitStack()
        self._ws = self._stack.enter_context(
            connect(pages[0]["webSocketDebuggerUrl"], max_size=None)
        )
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> Any:
        call_id = next(self._ids)
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=30))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        self._stack.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
