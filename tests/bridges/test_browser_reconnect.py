"""signalbus.js in a real browser: a token that expires mid-stream is renewed and the
stream resumes where it stopped, losing nothing and repeating nothing."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from brokers.zeromq import ZeroMQBroker
from tests.browser import Chromium, chromium_or_skip

from ..helpers import metric, send, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    chromium = Chromium(chromium_or_skip(), tmp_path / "profile")
    yield chromium
    chromium.close()



def test_an_expired_token_is_renewed_and_the_stream_resumes_without_loss(
    live_server, settings, worker_factory, browser
):
    worker = worker_factory(
        env={
            "SIGNALBUS_TEST_SETTINGS": json.dumps(
                {"ALLOWED_ORIGINS": [live_server.url], "RETRY_MS": 300}
            )
        }
    ).start()
    settings.SIGNALBUS = {**settings.SIGNALBUS, "EVENTS_URL": f"{worker.url}/events"}
    broker = ZeroMQBroker(worker.broker_url, connect_timeout=5)
    try:
        browser.goto(f"{live_server.url}/bus-page/?ttl=2")
        wait_for(lambda: metric(worker, "signalbus_sse_streams") == 1, timeout=15)
        user = re.search(r"user\.(\d+)\.", browser.evaluate("window.streams[0]")).group(1)
        topic = f"user.{user}.inbox"
        first = send(broker, topic)
        wait_for(lambda: browser.evaluate("window.got") == [first.id])
        # The token expires: the worker ends the stream, the browser's own reconnect
        # gets 401, and the helper fetches a fresh token from the site.
        wait_for(lambda: metric(worker, "signalbus_sse_streams") == 0, timeout=10)
        missed = [send(broker, topic), send(broker, topic)]
        wait_for(lambda: len(browser.evaluate("window.got")) == 3, timeout=15)
        live = send(broker, topic)
        wait_for(lambda: len(browser.evaluate("window.got")) == 4)
        got = browser.evaluate("window.got")
        streams = browser.evaluate("window.streams")
    finally:
        broker.close()
    assert got == [first.id, *(e.id for e in missed), live.id]
    assert len(streams) == 2
    assert f"lastEventId={first.id}" in streams[1]
    token = re.compile(r"token=([^&]+)")
    assert token.search(streams[0]).group(1) != token.search(streams[1]).group(1)
    assert re.search(r'"GET /events\?topic=user\.\d+\.%23&token=\*\* HTTP/1.1" 401', worker.log())
