"""Tokens at the SSE endpoint, through a real worker process and real sockets.

The worker runs tests.project.settings, the same settings (and SECRET_KEY) pytest-django
gives this process, so tokens issued here verify there."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from django.core import signing

from signalbus.tokens import SALT, issue_token

from ..helpers import SSEReader, events_url, raw_request, send


class User:
    def __init__(self, pk: object) -> None:
        self.pk = pk


@pytest.fixture
def token7() -> str:
    return issue_token(["user.7.#"], user=User(7), ttl=600)


def test_token_reads_its_user_and_not_one_byte_of_another(shared_worker, publisher, token7):
    with SSEReader(events_url(shared_worker, "user.7.#", token=token7)) as reader:
        send(publisher, "user.8.inbox", {"secret": "EIGHT-SECRET"})
        send(publisher, "user.8.x.y", {"secret": "EIGHT-SECRET"})
        wanted = send(publisher, "user.7.inbox", {"hello": 7})
        assert reader.get().id == wanted.id
        reader.assert_quiet()
    # and on the wire: read the raw bytes while both users' events go out
    raw_target = f"/events?{httpx.QueryParams({'topic': 'user.7.inbox', 'token': token7})}"

    def publish_later() -> None:
        time.sleep(0.4)
        send(publisher, "user.8.inbox", {"secret": "EIGHT-SECRET"})
        send(publisher, "user.7.inbox", {"mark": "SEVEN-MARK"})

    thread = threading.Thread(target=publish_later)
    thread.start()
    raw = raw_request(shared_worker.port, raw_target, read_for=3, until=b"SEVEN-MARK")
    thread.join()
    assert raw.startswith(b"HTTP/1.1 200")
    assert b"SEVEN-MARK" in raw
    assert b"EIGHT" not in raw
    assert b"user.8" not in raw


@pytest.mark.parametrize("pattern", ["user.#", "#", "user.*.inbox", "user.70.#", "user.8.inbox"])
def test_pattern_beyond_the_token_gets_403(shared_worker, token7, pattern):
    response = httpx.get(events_url(shared_worker, "user.7.inbox", pattern, token=token7))
    assert response.status_code == 403
    assert pattern in response.json()["error"]
    assert token7 not in response.text


def test_public_patterns_are_allowed_alongside_a_token(shared_worker, token7):
    with SSEReader(events_url(shared_worker, "user.7.inbox", "shop.#", token=token7)):
        pass


def _bad_tokens() -> dict[str, str]:
    good = issue_token(["user.7.#"], user=User(7), ttl=600)
    forged = signing.dumps({"t": ["#"], "u": None, "e": 2**40}, salt=SALT, compress=True)
    return {
        "forged": "e30:" + good.rsplit(":", 1)[-1],
        "tampered": forged.partition(":")[0] + ":" + good.partition(":")[2],
        "other-salt": signing.dumps({"t": ["user.7.#"], "u": "7", "e": 2**40}, salt="other"),
        "expired": signing.dumps({"t": ["user.7.#"], "u": "7", "e": 1}, salt=SALT),
        "empty": "",
    }


@pytest.mark.parametrize("kind", ["forged", "tampered", "other-salt", "expired", "empty"])
@pytest.mark.parametrize("via", ["query", "bearer", "cookie"])
def test_bad_token_gets_401_without_echoing_it(shared_worker, kind, via):
    token = _bad_tokens()[kind]
    if via == "query":
        response = httpx.get(events_url(shared_worker, "user.7.inbox", token=token))
    elif via == "bearer":
        response = httpx.get(
            events_url(shared_worker, "user.7.inbox"),
            headers={"Authorization": f"Bearer {token}".strip()},
        )
    else:
        response = httpx.get(
            events_url(shared_worker, "user.7.inbox"),
            headers={"Cookie": f"signalbus_token={token}"},
        )
    assert response.status_code == 401
    message = response.json()["error"]
    assert ("expired" if kind == "expired" else "token") in message
    if token:
        assert token not in response.text


def test_bad_token_with_public_pattern_still_gets_401(shared_worker):
    response = httpx.get(events_url(shared_worker, "shop.#", token="garbage"))
    assert response.status_code == 401


@pytest.mark.parametrize("via", ["query", "bearer", "cookie"])
def test_token_via_query_bearer_and_cookie(shared_worker, publisher, token7, via):
    headers = {}
    params = {}
    if via == "query":
        params["token"] = token7
    elif via == "bearer":
        headers["Authorization"] = f"Bearer {token7}"
    else:
        headers["Cookie"] = f"signalbus_token={token7}"
    with SSEReader(events_url(shared_worker, "user.7.#", **params), headers=headers) as reader:
        sent = send(publisher, "user.7.inbox", {"via": via})
        assert reader.get().id == sent.id


def test_stream_ends_when_its_token_expires_and_the_reconnect_gets_401(shared_worker, publisher):
    token = issue_token(["user.7.#"], user=User(7), ttl=2)
    started = time.monotonic()
    with SSEReader(events_url(shared_worker, "user.7.#", token=token)) as reader:
        sent = send(publisher, "user.7.inbox")
        assert reader.get().id == sent.id
        assert reader.ended.wait(5), "the stream outlived its token"
        elapsed = time.monotonic() - started
    assert 0.5 < elapsed < 3.5
    response = httpx.get(events_url(shared_worker, "user.7.#", token=token))
    assert response.status_code == 401
    assert "expired" in response.json()["error"]


def test_the_token_never_reaches_the_worker_log(shared_worker, token7):
    httpx.get(events_url(shared_worker, "user.70.#", token=token7))
    httpx.get(events_url(shared_worker, "user.7.#", token=token7 + "x"))
    log = shared_worker.log()
    assert token7 not in log
    assert token7.rsplit(":", 1)[-1] not in log
