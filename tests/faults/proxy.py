"""A TCP proxy that a test controls: cut every connection through it, refuse new ones, restore.

Put between a client and a real server, it makes the faults of a network or of a
server restart happen on cue, without touching the server that other tests share.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.helpers import HOST

Pair = tuple[socket.socket, socket.socket]


class TCPProxy:
    """Listens on a free port of 127.0.0.1 and relays each connection to ``upstream``."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.accepted = 0
        self._listener = socket.create_server((HOST, 0))
        self._listener.settimeout(0.05)  # so that `close` ends the accept loop promptly
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: set[Pair] = set()
        self._refusing = False
        self._closed = False
        self._replies = threading.Event()  # cleared: what the server says is held back
        self._replies.set()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def cut(self, *, refuse: bool = True) -> None:
        """Drop every relayed connection; with ``refuse``, hang up on new ones until `restore`."""
        self._refusing = refuse
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            self._drop(pair)

    def hold_replies(self) -> None:
        """Relay what clients send but hold what the server answers, until `restore`: the
        broker gets a message and the client never hears that it did."""
        self._replies.clear()

    def restore(self) -> None:
        self._refusing = False
        self._replies.set()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._thread.join(1)
        self._listener.close()

    def __enter__(self) -> TCPProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            # Relay each write at once: Nagle's algorithm against the peers' delayed ACKs
            # would hold small AMQP frames for 40 ms, a slowness no real network adds here.
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._refusing:
                client.close()
                continue
            self._relay(client)

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = (client, upstream)
        with self._lock:
            self._pairs.add(pair)
            self.accepted += 1
        for source, target, replies in ((client, upstream, False), (upstream, client, True)):
            threading.Thread(
                target=self._pump, args=(source, target, pair, replies), daemon=True
            ).start()

    def _pump(
        self, source: socket.socket, target: socket.socket, pair: Pair, replies: bool
    ) -> None:
        try:
            while chunk := source.recv(65536):
                if replies:
                    self._replies.wait()
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            self._drop(pair)

    def _drop(self, pair: Pair) -> None:
        with self._lock:
            if pair not in self._pairs:
                return
            self._pairs.discard(pair)
        for sock in pair:
            # shutdown wakes the other pump, blocked in recv; close alone would not.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
