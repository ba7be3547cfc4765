"""Subscribers for worker processes (`tests.bridges.remote_settings`).

Each call appends one line, ``<what> <event id> <time>``, to ``<pid>.log`` in
``$SIGNALBUS_TEST_RECORD_DIR``: a file per process, so the test can tell which
worker handled what, with no lock between processes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import signalbus


def record(what: str, event: signalbus.Event) -> None:
    path = Path(os.environ["SIGNALBUS_TEST_RECORD_DIR"]) / f"{os.getpid()}.log"
    with path.open("a") as log:
        log.write(f"{what} {event.id} {time.time():.3f}\n")


@signalbus.subscriber("work.#", name="work")
def work(event: signalbus.Event) -> None:
    time.sleep(0.01)  # long enough that both workers get a share of a burst
    record("work", event)


@signalbus.subscriber("slow.#", name="slow")
def slow(event: signalbus.Event) -> None:
    record("slow-start", event)
    time.sleep(1.0)
    record("slow-end", event)


@signalbus.subscriber("fail.#", name="fail", retries=1)
def fail(event: signalbus.Event) -> None:
    record("fail", event)
    raise ValueError(f"cannot handle {event.id}")
