"""The 0MQ forwarder of ``signalbus worker --workers N`` (DESIGN.md, "Scaling out").

With 0MQ one process binds the ``zmq://HOST:PORT`` address and every Django
process connects to it, so N worker processes cannot all bind it. The
supervisor binds it instead, as an XSUB socket, and an XPUB socket on a
private ``ipc://`` endpoint (in a temporary directory only this user can
enter) where each worker process connects its SUB socket; ``zmq.proxy``
between the two runs in a thread of the supervisor.

Subscriptions travel up through the proxy: a publisher still waits for a
worker's subscription before its first send (`brokers.zeromq`), and sees it at
once, since XSUB replays the subscriptions it holds to every publisher that
connects. Events travel down to every worker process, each filtering with its
own patterns. A worker process 100,000 events behind (the high-water mark)
misses events, as 0MQ PUB/SUB does: at most once.

Why a second 0MQ hop rather than a relay of our own: one over Unix sockets, from a
Python thread here into each worker process's event loop, spares every worker process its
libzmq I/O thread, but its thread's wake-ups cost what it spared (25.7 against 26.1 µs of
CPU per delivery at 100 streams and 100 events/s, within the spread between runs;
benchmarks/README.md). ``zmq.proxy`` runs in C.
"""

from __future__ import annotations

import logging
import shutil
import signal
import tempfile
import threading
from typing import TYPE_CHECKING

from .zeromq import SEND_HWM, bind_error, parse_zmq_url

if TYPE_CHECKING:
    import zmq

__all__ = ["ZeroMQForwarder"]

logger = logging.getLogger("signalbus.brokers.zeromq")


class ZeroMQForwarder:
    """XSUB on the broker address, XPUB on a private endpoint, a proxy thread between."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.endpoint = ""  # where the worker processes connect: set by `start`
        self._directory: str | None = None
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._control: zmq.Socket[bytes] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        """Bind both ends and start forwarding; the endpoint for the workers. Raises
        `signalbus.errors.BrokerUnavailable` (one line) when the address is taken."""
        import zmq

        address = parse_zmq_url(self.url)
        self._directory = tempfile.mkdtemp(prefix="signalbus-")
        self.endpoint = f"ipc://{self._directory}/workers"
        context = self._context = zmq.Context()
        frontend, backend = context.socket(zmq.XSUB), context.socket(zmq.XPUB)
        steer = context.socket(zmq.PAIR)
        frontend.setsockopt(zmq.RCVHWM, SEND_HWM)
        backend.setsockopt(zmq.SNDHWM, SEND_HWM)
        try:
            frontend.bind(address)
        except zmq.ZMQError as exc:
            for sock in (frontend, backend, steer):
                sock.close(linger=0)
            self.close()
            raise bind_error(self.url, exc) from None
        backend.bind(self.endpoint)
        steer.bind(f"inproc://signalbus-forwarder-{id(self)}")
        self._control = context.socket(zmq.PAIR)
        self._control.connect(f"inproc://signalbus-forwarder-{id(self)}")
        self._thread = threading.Thread(
            target=_forward, args=(frontend, backend, steer), name="signalbus-0mq-forwarder"
        )
        self._thread.start()
        return self.endpoint

    def close(self) -> None:
        """Stop the proxy, release both addresses and the temporary directory."""
        if self._control is not None:
            if self._thread is not None:
                self._control.send(b"TERMINATE")
                self._thread.join()  # before closing: linger 0 would drop TERMINATE
                self._thread = None
            self._control.close(linger=0)
            self._control = None
        if self._context is not None:
            self._context.term()
            self._context = None
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None


def _forward(
    frontend: zmq.Socket[bytes], backend: zmq.Socket[bytes], steer: zmq.Socket[bytes]
) -> None:
    """The proxy thread: it owns the three sockets until ``TERMINATE`` arrives on ``steer``."""
    import zmq

    # Signals are for the supervisor's main thread: none lands here while a child starts.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        zmq.proxy_steerable(frontend, backend, None, steer)
    except zmq.ZMQError as exc:  # pragma: no cover - only a libzmq failure gets here
        logger.error("the 0MQ forwarder stopped: %s", exc)
    finally:
        for sock in (frontend, backend, steer):
            sock.close(linger=0)
