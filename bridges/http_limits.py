"""Limits on each request head, below the app: its size and the time it takes to arrive.

Why below the app: httptools buffers a request head without bound (50 MB of
headers reached the app and got a 200), and a client that opens a connection and
trickles a head never reaches the app at all (slowloris), yet holds a socket.
uvicorn's httptools protocol is extended here, not replaced: once a head is
complete, everything is uvicorn's own.

- A head (request line and headers) over ``MAX_HEADER_BYTES``: 414 when the
  request line alone is over it, else 431; the connection is closed.
- A head begun but not complete within ``HEADER_TIMEOUT``: 408, closed. A
  connection that has sent nothing by then is closed without a word (browsers
  open spare connections and may never use them).

It also hands each request's cycle to the app, as
``scope["extensions"]["signalbus.direct"]["cycle"]``: an SSE stream writes its chunks
straight to the cycle's transport when it can (`bridges.sse_response`), which spares
uvicorn's per-message work on every event.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import MutableMapping
from http import HTTPStatus
from typing import Any

__all__ = ["head_limited_protocol"]

logger = logging.getLogger("signalbus.sse")


def head_limited_protocol(
    max_header_bytes: int, header_timeout: float, rejected: MutableMapping[int, int]
) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with these limits; ``rejected`` counts refusals by status."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeadLimitedProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_timer: asyncio.TimerHandle | None = None
            self._start_head()

        def _start_head(self) -> None:
            self._head_bytes = 0
            self._line_done = False
            self._head_timer = self.loop.call_later(header_timeout, self._head_too_slow)

        def _end_head(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def data_received(self, data: bytes) -> None:
            if self._head_timer is not None:
                self._head_bytes += len(data)
                if self._head_bytes > max_header_bytes:
                    room = max_header_bytes - (self._head_bytes - len(data))
                    line_done = self._line_done or b"\n" in data[:room]
                    self._refuse(431 if line_done else 414)
                    return
                self._line_done = self._line_done or b"\n" in data
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._end_head()
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is not None and cycle.scope is self.scope:  # not an upgrade
                # Set before the app's task first runs: it was only scheduled.
                extensions = self.scope.setdefault("extensions", {})
                extensions["signalbus.direct"] = {"cycle": cycle}

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._start_head()  # the next request on this keep-alive connection

        def connection_lost(self, exc: Exception | None) -> None:
            self._end_head()
            super().connection_lost(exc)

        def _head_too_slow(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            if self._head_bytes == 0:
                self.transport.close()
            else:
                self._refuse(408)

        def _refuse(self, status: int) -> None:
            self._end_head()
            message = {
                408: f"the request head did not arrive within {header_timeout:g} s",
                414: f"the request line is over {max_header_bytes} bytes",
                431: f"the request head is over {max_header_bytes} bytes",
            }[status]
            rejected[status] = rejected.get(status, 0) + 1
            logger.info("refused a request from %s: %s", _address(self.client), message)
            body = json.dumps({"error": message}).encode()
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"cache-control: no-store\r\nconnection: close\r\n\r\n%s"
                % (status, HTTPStatus(status).phrase.encode(), len(body), body)
            )
            self.transport.close()

    return HeadLimitedProtocol


def _address(client: Any) -> str:
    return f"{client[0]}:{client[1]}" if client else "an unknown address"
