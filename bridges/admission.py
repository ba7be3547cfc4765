"""Who may open one more stream on this worker: the limits per worker, per user and per
client address (README, "Limits").

The status codes are chosen for what a browser's ``EventSource`` does with them:
it gives up for good on any status but 200. A user or an address over its own
limit is abusing the endpoint, so it gets 429 and stays away. A worker that is
merely full is nobody's fault: the client gets a 200 stream that carries only a
longer ``retry:`` (with jitter, so that a crowd does not come back at once) and
ends, and the browser reconnects later, perhaps to another worker. Counts are
per worker process; nothing is shared between workers.

The address is the one uvicorn reports: a trusted proxy's ``X-Forwarded-For``
where it sends one. A trusted proxy's own address (``FORWARDED_ALLOW_IPS``,
uvicorn's setting, 127.0.0.1 by default) is not a client and has no limit of
its own: every client behind a proxy that sends no such header shares it.
"""

from __future__ import annotations

import ipaddress
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from signalbus.conf import Settings

__all__ = ["Admission", "Refusal", "Ticket"]


@dataclass(frozen=True)
class Refusal:
    """Why a stream was not opened: 429 with this message, or ``busy`` (a 200 that ends)."""

    status: int
    message: str
    retry_ms: int = 0

    @property
    def busy(self) -> bool:
        return self.status == 200


@dataclass(frozen=True)
class Ticket:
    """One admitted stream; give it back with `Admission.release` when the stream ends."""

    user: str | None
    address: str | None


class Admission:
    """Counts of open streams, checked against the settings' limits."""

    def __init__(self, settings: Settings, trusted_proxies: Sequence[str] | None = None) -> None:
        self.settings = settings
        if trusted_proxies is None:  # as uvicorn reads it
            trusted_proxies = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1").split(",")
        self._proxies = _networks(trusted_proxies)
        self.open = 0
        self.busy = 0  # streams turned away because the worker was full
        self._by_user: Counter[str] = Counter()
        self._by_address: Counter[str] = Counter()

    def client(self, address: str | None) -> str | None:
        """The key the per-address limit counts: the address, or None for a trusted proxy
        (or no address at all). Resolved once per request."""
        if address is None or self._proxies is None:
            return None
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address
        return None if any(ip in network for network in self._proxies) else address

    def check_address(self, client: str | None) -> Refusal | None:
        """Checked before the credentials too: a flood from one address costs no session
        lookup. ``client`` is what `client` gave."""
        limit = self.settings.max_connections_per_address
        if client is not None and self._by_address[client] >= limit:
            return Refusal(429, f"{limit} streams are open from {client}; the limit is {limit}")
        return None

    def admit(self, user: str | None, client: str | None) -> Ticket | Refusal:
        refusal = self.check_address(client)  # again: others may have opened since
        if refusal is not None:
            return refusal
        limit = self.settings.max_connections_per_user
        if user is not None and self._by_user[user] >= limit:
            return Refusal(429, f"{limit} streams are open for this user; the limit is {limit}")
        if self.open >= self.settings.max_connections:
            self.busy += 1
            retry_ms = int(self.settings.retry_ms * random.uniform(1.0, 3.0))  # noqa: S311
            return Refusal(
                200,
                f"worker busy: {self.open} streams open, the limit is"
                f" {self.settings.max_connections}",
                retry_ms,
            )
        self.open += 1
        if user is not None:
            self._by_user[user] += 1
        if client is not None:
            self._by_address[client] += 1
        return Ticket(user, client)

    def release(self, ticket: Ticket) -> None:
        self.open -= 1
        for counts, key in ((self._by_user, ticket.user), (self._by_address, ticket.address)):
            if key is not None:
                counts[key] -= 1
                if counts[key] <= 0:
                    del counts[key]


def _networks(entries: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None:
    """The trusted proxies as networks; None when every address is trusted (``*``)."""
    networks = []
    for entry in (e.strip() for e in entries):
        if entry == "*":
            return None
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue  # a unix socket path or a name: never a client address here
    return networks
