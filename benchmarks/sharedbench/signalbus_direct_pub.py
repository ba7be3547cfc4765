"""The publish endpoint of the peer harness's ``signalbus-direct`` target.

A bare asyncio HTTP server whose ``POST /publish`` turns the body into a signalbus event
(CloudEvents JSON, topic ``benchapp.tick.<n>.created``, data ``{"payload": body}``) and
sends it with signalbus's own 0MQ publisher, as ``signalbus publish`` does: the worker's
fan-out fed the way Nchan's ``POST /pub`` is, with no Django request per event.

    python signalbus_direct_pub.py PORT BROKER_URL
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from typing import Any

from brokers.zeromq import ZeroMQBroker
from signalbus.events import Event


class Publisher(asyncio.Protocol):
    """One client connection; every complete request is one event."""

    numbers = itertools.count(1)

    def __init__(self, broker: ZeroMQBroker) -> None:
        self.broker = broker
        self.buffer = b""
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            topic = f"benchapp.tick.{next(self.numbers)}.created"
            event = Event.create(topic, {"payload": body.decode()}, type="benchapp.tick.created")
            self.broker.publish(event.topic, event.encode())
            self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")


async def serve(port: int, broker: ZeroMQBroker) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Publisher(broker), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    uvloop.run(serve(int(sys.argv[1]), ZeroMQBroker(sys.argv[2], connect_timeout=10)))
