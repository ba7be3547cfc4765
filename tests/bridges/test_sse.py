"""The SSE endpoint of DESIGN.md: a real worker process, real sockets, a real SSE parser."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from brokers.zeromq import ZeroMQBroker

from ..helpers import (
    HOST,
    ROOT,
    SSEReader,
    WorkerProcess,
    child_env,
    events_url,
    metric,
    raw_request,
    send,
    stop_cleanly,
    wait_for,
)


def test_each_event_is_one_message_with_its_id_and_json(shared_worker, publisher):
    with SSEReader(events_url(shared_worker, "shop.#")) as reader:
        sent = send(publisher, "shop.order.7.updated", {"status": "paid", "note": "a\nb\r\nc"})
        got = reader.get()
    assert got.id == sent.id
    assert got.event == "message"  # no event: field, so EventSource.onmessage sees it
    assert json.loads(got.data) == sent.to_dict()


def test_stream_opens_with_retry_and_no_store_headers(shared_worker):
    raw = raw_request(shared_worker.port, "/events?topic=shop.%23", read_for=1, until=b"\n\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    headers = head.decode().lower()
    assert "content-type: text/event-stream" in headers
    assert "cache-control: no-store" in headers
    assert "x-accel-buffering: no" in headers
    first_line = body.split(b"\r\n", 1)[-1] if b"chunked" in headers.encode() else body
    assert b"retry: 3000\n" in first_line
    assert first_line.index(b"retry:") < 8  # the first thing in the body (after the chunk size)


def test_idle_stream_gets_ping_comments(tmp_path):
    with WorkerProcess(tmp_path, env={"SIGNALBUS_TEST_KEEPALIVE": "0.2"}) as worker:
        raw = raw_request(worker.port, "/events?topic=shop.%23", read_for=1.2)
    assert raw.count(b": ping\n\n") >= 3


def test_a_pattern_receives_only_matching_topics(shared_worker, publisher):
    with SSEReader(events_url(shared_worker, "shop.order.*.updated")) as reader:
        send(publisher, "shop.order.1.created")
        send(publisher, "shop.item.1.updated")
        wanted = send(publisher, "shop.order.1.updated")
        assert reader.get().id == wanted.id
        reader.assert_quiet()


def test_overlapping_patterns_deliver_each_event_once(shared_worker, publisher):
    with SSEReader(events_url(shared_worker, "shop.#", "shop.order.*.paid", "public.#")) as reader:
        first = send(publisher, "shop.order.3.paid")
        second = send(publisher, "public.news")
        assert [e.id for e in reader.take(2)] == [first.id, second.id]
        reader.assert_quiet()


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "missing topic"),
        ("topic=", "empty pattern"),
        ("topic=shop..x", "word 2 is an empty word"),
        ("topic=shop.or*der", "word 2 is 'or*der'"),
        ("topic=shop.%0Aevent", "word 2"),
        ("topic=" + "a." * 200 + "b", "bytes long"),
        ("&".join(["topic=shop.x"] * 33), "the limit is 32"),
    ],
)
def test_bad_patterns_get_400_with_the_reason(shared_worker, query, message):
    response = httpx.get(f"{shared_worker.url}/events?{query}")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"]


@pytest.mark.parametrize(
    "pattern", ["private.x", "#", "*.order.1", "shopping.#", "publicity", "#.shop.#"]
)
def test_pattern_outside_public_topics_without_credentials_gets_401(shared_worker, pattern):
    response = httpx.get(events_url(shared_worker, "shop.#", pattern))
    assert response.status_code == 401
    assert pattern in response.json()["error"]


def test_cors_grants_only_the_exact_allowed_origin(shared_worker):
    url = events_url(shared_worker, "shop.#")
    for origin, granted in [
        ("http://app.example", True),
        ("http://app.example.evil", False),
        ("https://app.example", False),
        ("null", False),
    ]:
        with SSEReader(url, headers={"Origin": origin}) as reader:
            headers = reader.response_headers
            assert headers is not None
            if granted:
                assert headers["access-control-allow-origin"] == origin
                assert headers["access-control-allow-credentials"] == "true"
            else:
                assert "access-control-allow-origin" not in headers
                assert "access-control-allow-credentials" not in headers


def test_last_event_id_resumes_with_no_gap_and_no_duplicate(shared_worker, publisher):
    with SSEReader(events_url(shared_worker, "shop.order.#")) as first:
        sent = [send(publisher, f"shop.order.{i}.created", {"i": i}) for i in range(6)]
        send(publisher, "shop.item.1.created")  # held, but not for this pattern
        assert [e.id for e in first.take(6)] == [e.id for e in sent]
    resume = {"Last-Event-ID": sent[2].id}
    with SSEReader(events_url(shared_worker, "shop.order.#"), headers=resume) as again:
        live = send(publisher, "shop.order.9.created")
        ids = [e.id for e in again.take(4)]
        again.assert_quiet()
    assert ids == [e.id for e in sent[3:]] + [live.id]


def test_last_event_id_query_parameter_resumes_too(shared_worker, publisher):
    with SSEReader(events_url(shared_worker, "shop.q.#")) as first:
        sent = [send(publisher, f"shop.q.{i}") for i in range(3)]
        first.take(3)
    with SSEReader(events_url(shared_worker, "shop.q.#", lastEventId=sent[0].id)) as again:
        assert [e.id for e in again.take(2)] == [sent[1].id, sent[2].id]


@pytest.mark.parametrize(
    "last_id",
    ["0123456789abcdef0123456789abcdef", "x" * 65, "../../etc", "id:%0Adata", "\u00e9t\u00e9"],
)
def test_unknown_last_event_id_starts_with_a_reset_naming_the_newest_event(
    shared_worker, publisher, last_id
):
    with SSEReader(events_url(shared_worker, "shop.r.#")) as first:
        newest = send(publisher, "shop.r.1")
        first.get()
    url = events_url(shared_worker, "shop.r.#", lastEventId=last_id)
    with SSEReader(url) as reader:
        reset = reader.get()
        live = send(publisher, "shop.r.2")
        assert reader.get().id == live.id
    body = json.loads(reset.data)
    assert body["type"] == "signalbus.reset"
    assert reset.id == body["id"] == newest.id


def test_slow_client_is_disconnected_while_another_keeps_up(tmp_path):
    count, size = 600, 30_000
    env = {"SIGNALBUS_TEST_CLIENT_QUEUE": "50"}
    with WorkerProcess(tmp_path, env=env) as worker:
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect((HOST, worker.port))
        slow.sendall(f"GET /events?topic=shop.%23 HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        with SSEReader(events_url(worker, "shop.#")) as fast:
            publisher = ZeroMQBroker(worker.broker_url, connect_timeout=5)
            sent, received = [], []
            # In steps a reader keeps up with (a queue holds 50), however busy the machine;
            # the slow client reads nothing at all.
            for step in range(0, count, 25):
                batch = range(step, step + 25)
                sent += [send(publisher, f"shop.s.{i}", {"pad": "x" * size}) for i in batch]
                received += fast.take(25, timeout=30)
            publisher.close()
        assert [e.id for e in received] == [e.id for e in sent]
        # The slow client now reads: it finds a stream the server ended before the last event.
        slow.settimeout(10)
        data = b""
        while chunk := slow.recv(1 << 20):
            data += chunk
        slow.close()
        assert data.count(b"\nid: ") + data.count(b"\r\nid: ") < count
        metrics = httpx.get(worker.url + "/metrics").text
        assert "signalbus_slow_client_disconnects_total 1.0" in metrics
        # ... and resumes from the last id it got, losing nothing.
        last = [line for line in data.split(b"\n") if line.startswith(b"id: ")][-1][4:].decode()
        with SSEReader(events_url(worker, "shop.#"), headers={"Last-Event-ID": last}) as again:
            rest = again.take(count - [e.id for e in sent].index(last) - 1, timeout=20)
        assert rest[-1].id == sent[-1].id


def test_health_readiness_and_metrics(shared_worker, publisher):
    assert httpx.get(shared_worker.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(shared_worker.url + "/readyz").status_code == 200
    before = metric(shared_worker, "signalbus_events_received_total")
    with SSEReader(events_url(shared_worker, "shop.m.#")) as reader:
        send(publisher, "shop.m.1")
        reader.get()
        assert metric(shared_worker, "signalbus_sse_streams") >= 1
    assert metric(shared_worker, "signalbus_events_received_total") == before + 1
    assert 0 < metric(shared_worker, "signalbus_delivery_lag_seconds") < 5
    assert metric(shared_worker, "signalbus_broker_ready") == 1



def test_head_request_answers_without_streaming(shared_worker):
    response = httpx.head(events_url(shared_worker, "shop.#"), timeout=3)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")


def test_non_json_message_on_the_broker_is_ignored_and_the_worker_goes_on(shared_worker, publisher):
    with SSEReader(events_url(shared_worker, "shop.bad.#")) as reader:
        publisher.publish("shop.bad.1", b"not json")
        publisher.publish("shop.bad.2", b'{"specversion": "1.0"}')
        good = send(publisher, "shop.bad.3")
        assert reader.get().id == good.id
        reader.assert_quiet()


# -- sessions and AUTHORIZE -----------------------------------------------------------------

SESSION_SCRIPT = """
import django, json
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.contrib.auth import get_user_model, SESSION_KEY, BACKEND_SESSION_KEY, HASH_SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.auth.models import Permission
out = {}
for name in ("alice", "bob", "carol", "dave"):
    user = get_user_model().objects.create_user(name, password="pw-" + name)
    if name == "carol":
        user.is_staff = True
        user.save()
    if name == "dave":
        user.user_permissions.add(Permission.objects.get(codename="view_user"))
    s = SessionStore()
    s[SESSION_KEY] = str(user.pk)
    s[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    s[HASH_SESSION_KEY] = user.get_session_auth_hash()
    s.create()
    out[name] = {"id": user.pk, "session": s.session_key}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def session_worker(tmp_path_factory):
    tmp: Path = tmp_path_factory.mktemp("sessions")
    env = {"SIGNALBUS_TEST_DB": str(tmp / "db.sqlite3")}
    users = json.loads(
        subprocess.run(
            [sys.executable, "-c", SESSION_SCRIPT],
            env=child_env(DJANGO_SETTINGS_MODULE="tests.project.settings", **env),
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    with WorkerProcess(tmp, env=env) as worker:
        yield worker, users


def test_session_user_reads_own_private_topics(session_worker):
    worker, users = session_worker
    alice = users["alice"]
    cookie = {"Cookie": f"sessionid={alice['session']}"}
    with SSEReader(events_url(worker, f"user.{alice['id']}.#"), headers=cookie) as reader:
        assert reader.status == 200
        publisher = ZeroMQBroker(worker.broker_url, connect_timeout=5)
        mine = send(publisher, f"user.{alice['id']}.inbox")
        send(publisher, f"user.{users['bob']['id']}.inbox")
        assert reader.get().id == mine.id
        reader.assert_quiet()
        publisher.close()


def test_session_user_asking_beyond_the_grant_gets_403(session_worker):
    worker, users = session_worker
    alice, bob = users["alice"], users["bob"]
    cookie = {"Cookie": f"sessionid={alice['session']}"}
    for pattern in (f"user.{bob['id']}.#", "user.#", f"user.{alice['id']}0.#", "user.*.inbox"):
        response = httpx.get(events_url(worker, pattern), headers=cookie)
        assert response.status_code == 403, pattern
        assert pattern in response.json()["error"]


@pytest.mark.parametrize(
    ("pattern", "allowed"),
    [("staff.#", {"carol"}), ("staff.alerts.*", {"carol"}), ("auth.user.#", {"dave"})],
)
def test_ready_rules_grant_staff_and_model_permission_through_the_session(
    session_worker, pattern, allowed
):
    worker, users = session_worker
    for name, user in users.items():
        cookie = {"Cookie": f"sessionid={user['session']}"}
        response = httpx.head(events_url(worker, pattern), headers=cookie)
        assert response.status_code == (200 if name in allowed else 403), (name, pattern)
    for wider in ("#", "*.alerts", "auth.#", "*.user.#"):
        carol, dave = users["carol"], users["dave"]
        for user in (carol, dave):
            cookie = {"Cookie": f"sessionid={user['session']}"}
            assert httpx.head(events_url(worker, wider), headers=cookie).status_code == 403


def test_unknown_session_cookie_counts_as_no_credentials(session_worker):
    worker, users = session_worker
    key = users["alice"]["session"]
    altered = key[:-1] + ("x" if key[-1] != "x" else "y")  # always another key
    for value in ("not-a-session", altered, ""):
        # HEAD: a wrongly accepted cookie fails on its status instead of hanging on a stream
        response = httpx.head(
            events_url(worker, f"user.{users['alice']['id']}.#"),
            headers={"Cookie": f"sessionid={value}"},
        )
        assert response.status_code == 401, value


def test_shutdown_ends_open_streams_and_exits_zero(tmp_path):
    worker = WorkerProcess(tmp_path).start()
    stop_cleanly(worker, [SSEReader(events_url(worker, "shop.#")) for _ in range(3)])


def test_ctrl_c_exits_zero(tmp_path):
    import signal

    worker = WorkerProcess(tmp_path).start()
    reader = SSEReader(events_url(worker, "shop.#"))
    assert worker.stop(signal.SIGINT) == 0
    assert reader.ended.wait(2)
    reader.close()
    wait_for(lambda: worker.proc is not None and worker.proc.poll() is not None)
