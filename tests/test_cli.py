"""The ``signalbus`` command line, run as a user runs it: in a subprocess."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from brokers.zeromq import ZeroMQBroker
from signalbus.events import Event

from .helpers import HOST, ROOT, SSEReader, WorkerProcess, child_env, free_port, wait_for

SETTINGS = ("--settings", "tests.project.settings")


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "signalbus", *args],
        env=env or child_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ((), ("worker", "publish", "tail", "demo")),
        (("worker",), ("--settings", "--broker", "--host", "--port", "--topics", "--workers")),
        (("publish",), ("TOPIC", "JSON", "--type", "--subject", "--broker")),
        (("tail",), ("PATTERN", "--broker")),
        (("demo",), ("--port", "--worker-port", "--broker-port")),
    ],
)
def test_help_explains_every_option(command, options):
    done = run(*command, "--help")
    assert done.returncode == 0
    for option in options:
        assert option in done.stdout


def test_worker_without_settings_is_one_line():
    assert_one_line_error(run("worker"), "no settings module", "--settings")


def test_worker_with_unimportable_settings_is_one_line():
    assert_one_line_error(
        run("worker", "--settings", "no.such.settings"),
        "cannot import settings module 'no.such.settings'",
    )


def test_unknown_broker_scheme_is_one_line_with_the_password_masked():
    done = run("worker", *SETTINGS, "--broker", "amqpp://user:hunter2@host/")
    assert_one_line_error(done, "no broker for scheme amqpp://", "Did you mean amqp://?")
    assert "hunter2" not in done.stderr


def test_bad_zmq_url_is_one_line():
    assert_one_line_error(
        run("worker", *SETTINGS, "--broker", "zmq://127.0.0.1"), "zmq://HOST:PORT"
    )


def test_port_in_use_is_one_line():
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run(
            "worker", *SETTINGS, "--port", str(port), "--broker", f"zmq://{HOST}:{free_port()}"
        )
    assert_one_line_error(done, f"port {port} on 127.0.0.1 is in use")


@pytest.mark.parametrize("count", ["0", "-1"])
def test_workers_below_one_is_one_line(count):
    assert_one_line_error(
        run("worker", *SETTINGS, "--workers", count), f"--workers {count}: give 1 or more"
    )


def test_several_workers_on_the_memory_broker_is_one_line():
    done = run("worker", *SETTINGS, "--workers", "2", "--broker", "memory://")
    assert_one_line_error(done, "--workers 2", "memory:// reaches one process only")


def test_several_workers_port_in_use_is_one_line_before_any_worker_process_starts():
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run(
            "worker",
            *SETTINGS,
            "--workers",
            "2",
            "--port",
            str(port),
            "--broker",
            f"zmq://{HOST}:{free_port()}",
        )
    assert_one_line_error(done, f"port {port} on 127.0.0.1 is in use")


def test_several_workers_on_a_taken_zmq_address_is_one_line(shared_worker):
    done = run(
        "worker",
        *SETTINGS,
        "--workers",
        "2",
        "--port",
        str(free_port()),
        "--broker",
        shared_worker.broker_url,
    )
    assert_one_line_error(done, "cannot bind", "address in use")


def test_several_workers_on_0mq_with_subscribers_is_one_line():
    done = run(
        "worker",
        "--settings",
        "tests.bridges.remote_settings",
        "--workers",
        "2",
        "--port",
        str(free_port()),
        "--broker",
        f"zmq://{HOST}:{free_port()}",
    )
    assert_one_line_error(done, "--workers 2 on 0MQ would run each @signalbus.subscriber")


def test_zmq_endpoint_taken_by_another_worker_is_one_line(shared_worker):
    done = run(
        "worker", *SETTINGS, "--port", str(free_port()), "--broker", shared_worker.broker_url
    )
    assert_one_line_error(done, "cannot bind", "address in use")


def test_publish_reaches_the_stream_and_prints_the_id(shared_worker):
    with SSEReader(f"{shared_worker.url}/events?topic=public.%23") as reader:
        done = run(
            "publish",
            "public.invoice.7.paid",
            '{"amount": "12.50"}',
            "--type",
            "billing.paid",
            "--broker",
            shared_worker.broker_url,
        )
        assert done.returncode == 0, done.stderr
        got = reader.get()
    assert got.id == done.stdout.strip()
    body = json.loads(got.data)
    assert (body["type"], body["data"]) == ("billing.paid", {"amount": "12.50"})


def test_publish_with_no_worker_says_it_was_not_delivered():
    done = run("publish", "public.x", "--broker", f"zmq://{HOST}:{free_port()}")
    assert done.returncode == 1
    assert "not delivered: no worker subscribed" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [(("public..x",), "word 2 is an empty word"), (("public.x", "{nope"), "not valid JSON")],
)
def test_publish_bad_input_is_one_line(args, fragment):
    assert_one_line_error(
        run("publish", *args, "--broker", f"zmq://{HOST}:{free_port()}"), fragment
    )


def test_manage_py_signalbus_is_the_same_program(shared_worker):
    env = child_env(
        DJANGO_SETTINGS_MODULE="tests.project.settings",
        SIGNALBUS_BROKER_URL=shared_worker.broker_url,
    )
    with SSEReader(f"{shared_worker.url}/events?topic=public.%23") as reader:
        done = subprocess.run(
            [sys.executable, "-m", "django", "signalbus", "publish", "public.m"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        assert reader.get().id == done.stdout.strip()


def test_tail_prints_each_event_as_a_json_line_and_stops_on_ctrl_c(tmp_path):
    url = f"zmq://{HOST}:{free_port()}"
    out, err = tmp_path / "tail.out", tmp_path / "tail.err"
    with open(out, "wb") as sink, open(err, "wb") as errors:
        tail = subprocess.Popen(
            [sys.executable, "-m", "signalbus", "tail", "shop.order.*", "--broker", url],
            stdout=sink,
            stderr=errors,
            env=child_env(),
            cwd=ROOT,
        )
    try:
        broker = ZeroMQBroker(url, connect_timeout=10)
        wanted = Event.create("shop.order.1", {"n": 1})
        broker.publish(
            "shop.order.1.paid", Event.create("shop.order.1.paid").encode()
        )  # not matching
        broker.publish(wanted.topic, wanted.encode())
        broker.close()
        wait_for(lambda: out.read_bytes().count(b"\n") >= 1, timeout=10)
        time.sleep(0.2)
    finally:
        tail.send_signal(signal.SIGINT)
        assert tail.wait(10) == 0
    lines = out.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [wanted.id]
    assert "Traceback" not in err.read_text()


def test_a_worker_restart_needs_no_restart_of_the_publisher(tmp_path):
    first = WorkerProcess(tmp_path).start()
    broker = ZeroMQBroker(first.broker_url, connect_timeout=5)
    url = f"{first.url}/events?topic=public.%23"
    with SSEReader(url) as reader:
        before = Event.create("public.before")
        broker.publish(before.topic, before.encode())
        assert reader.get().id == before.id
    assert first.stop() == 0
    second = WorkerProcess(tmp_path, broker_url=first.broker_url)
    second.port, second.url = first.port, first.url
    second.start()
    try:
        with SSEReader(url) as reader:
            # 0MQ reconnects by itself: the publisher is not restarted, and publishes until
            # the new worker, whose stream opened after it started, gets one.
            def delivered() -> bool:
                event = Event.create("public.after")
                broker.publish(event.topic, event.encode())
                try:
                    return reader.get(timeout=0.2).id == event.id
                except Exception:
                    return False

            wait_for(delivered, timeout=10)
    finally:
        broker.close()
        assert second.stop() == 0
