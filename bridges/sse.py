"""Bus -> browsers: the SSE endpoint of DESIGN.md as a Starlette app; each stream is an
`bridges.sse_response.SSEResponse`.

Deliberate choices:

- Each event's frame is encoded once by the hub; a stream writes the bytes of
  everything queued since its last write, joined, so a burst costs one send
  per client, not one per event (DESIGN.md, "Pitfalls").
- A client that stops reading is not waited for: its queue is bounded
  (``CLIENT_QUEUE``) and, past it, the stream is closed; a send blocked longer
  than ``send_timeout`` ends the response too (found by the app's one
  `StreamClock`, not by a timer per send). Either way the client resumes
  with ``Last-Event-ID``.
- Errors are JSON ``{"error": ...}`` with the status the contract names.
- A signed token (``?token=``, ``Authorization: Bearer``, or the ``signalbus_token``
  cookie) is checked before the session; a stream it opened is closed when it
  expires (one timer per such stream, no per-event cost), so the reconnect gets 401.
  The token is never logged.
- Limits per worker, per user and per client address are `bridges.admission`'s;
  limits on the request head are `bridges.http_limits`'.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from bridges.admission import Admission, Refusal
from signalbus.access import Decision, decide, is_public, session_user
from signalbus.conf import Settings
from signalbus.errors import InvalidTopic
from signalbus.hub import Hub
from signalbus.topics import validate_pattern

from .sse_response import SSEResponse, StreamClock, StreamStats

__all__ = ["StreamStats", "create_app"]


TOKEN_COOKIE = "signalbus_token"  # noqa: S105 (a cookie name, not a secret)
_EVENT_ID = re.compile(r"[0-9A-Za-z_\-]{1,64}")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _cors_headers(request: Request, allowed: Sequence[str]) -> dict[str, str]:
    """The exact allowed origin, echoed with credentials; anything else gets no grant."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and origin in allowed:
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Vary": "Origin",
        }
    return {"Vary": "Origin"} if allowed else {}


def _last_event_id(request: Request) -> str | None:
    """The id to resume after; a value no event could have becomes "unknown" (a reset)."""
    raw = request.headers.get("last-event-id") or request.query_params.get("lastEventId")
    if raw is None or raw == "":
        return None
    return raw if _EVENT_ID.fullmatch(raw) else "-"


def _token(request: Request) -> str | None:
    """The token presented: ``?token=``, then ``Authorization: Bearer``, then the cookie."""
    token = request.query_params.get("token")
    if token is not None:
        return token
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    return request.cookies.get(TOKEN_COOKIE)


def create_app(
    hub: Hub,
    settings: Settings,
    *,
    ready: Callable[[], bool],
    counters: Mapping[str, Callable[[], float]] | None = None,
    gauges: Mapping[str, Callable[[], float]] | None = None,
    send_timeout: float = 30.0,
    stats: StreamStats | None = None,
) -> ASGIApp:
    """The worker's web app: ``/events``, ``/healthz``, ``/readyz``, ``/metrics``.

    ``counters`` and ``gauges`` add the worker's own figures (name -> read function);
    ``stats`` is shared with what refuses requests below the app (`bridges.http_limits`)."""
    stats = stats or StreamStats()
    admission = Admission(settings)
    clock = StreamClock(keepalive=settings.keepalive, send_timeout=send_timeout, stats=stats)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(
        _HubCollector(hub, stats, admission, ready, dict(counters or {}), dict(gauges or {}))
    )

    def reject(status: int, message: str, cors: dict[str, str]) -> JSONResponse:
        stats.rejected[status] = stats.rejected.get(status, 0) + 1
        return _error(status, message, cors)

    def refuse(refusal: Refusal, cors: dict[str, str]) -> Response:
        if refusal.busy:
            return _busy(refusal, cors)
        retry_after = {"Retry-After": str(max(1, settings.retry_ms // 1000))}
        return reject(refusal.status, refusal.message, {**cors, **retry_after})

    async def events(request: Request) -> Response | SSEResponse:
        cors = _cors_headers(request, settings.allowed_origins)
        patterns = request.query_params.getlist("topic")
        if not patterns:
            return reject(400, "missing topic: ask for /events?topic=PATTERN", cors)
        limit = settings.max_topics
        if len(patterns) > limit:
            return reject(400, f"{len(patterns)} topics asked; the limit is {limit}", cors)
        client = admission.client(request.client.host if request.client else None)
        refusal = admission.check_address(client)
        if refusal is not None:
            return refuse(refusal, cors)
        try:
            patterns = list(dict.fromkeys(validate_pattern(p) for p in patterns))
        except InvalidTopic as exc:
            return reject(400, str(exc), cors)
        decision = await _decide(request, patterns, settings)
        if not decision.allowed:
            return reject(decision.status, decision.reason, cors)
        if request.method == "HEAD":
            return Response(media_type="text/event-stream", headers=cors)
        ticket = admission.admit(decision.user, client)
        if isinstance(ticket, Refusal):
            return refuse(ticket, cors)
        sub, first = hub.subscribe(tuple(patterns), _last_event_id(request))
        return SSEResponse(
            hub,
            sub,
            first,
            clock=clock,
            retry_ms=settings.retry_ms,
            headers=cors,
            expires=None if decision.grant is None else decision.grant.expires,
            on_end=partial(admission.release, ticket),
        )

    async def preflight(request: Request) -> Response:
        cors = _cors_headers(request, settings.allowed_origins)
        if "Access-Control-Allow-Origin" in cors:
            cors["Access-Control-Allow-Methods"] = "GET"
            cors["Access-Control-Allow-Headers"] = "Last-Event-ID, Authorization"
            cors["Access-Control-Max-Age"] = "600"
        return Response(status_code=204, headers=cors)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "broker not connected"}, status_code=503)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    starlette = Starlette(
        routes=[
            Route("/events", events, methods=["GET"]),  # and HEAD
            Route("/events", preflight, methods=["OPTIONS"]),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
        ]
    )
    return _StreamsFirst(starlette, events)


class _StreamsFirst:
    """The app the server runs: ``GET /events`` goes straight to its endpoint, the rest
    through Starlette.

    Starlette's middleware and routing wrap ``send`` three times and stack a dozen frames
    between the server and a stream: a third of the worker's CPU per write at 1,000
    clients, and about 6 KB per idle connection (benchmarks/README.md, "The SSE write
    path"). An error in the endpoint still reaches the server, which answers 500 and
    logs it, as Starlette's error middleware would."""

    def __init__(self, app: ASGIApp, events: Callable[[Request], Awaitable[ASGIApp]]) -> None:
        self.app = app
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and _route_path(scope) == "/events":
            response = await self.events(Request(scope, receive))
            await response(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _busy(refusal: Refusal, cors: dict[str, str]) -> Response:
    """A full worker's answer: a stream that only asks the browser to come back later."""
    body = b"retry: %d\n: %s\n\n" % (refusal.retry_ms, refusal.message.encode())
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no", **cors}
    return Response(body, media_type="text/event-stream", headers=headers)


async def _decide(request: Request, patterns: list[str], settings: Settings) -> Decision:
    """A token or public patterns need no database; anything else looks up the session
    user in a thread."""
    token = _token(request)
    if token is not None:
        return decide(patterns, settings, None, token)
    if all(is_public(p, settings.public_topics) for p in patterns):
        return Decision(200)
    cookies = dict(request.cookies)

    def check() -> Decision:
        return decide(patterns, settings, session_user(cookies))

    return await anyio.to_thread.run_sync(check)


class _HubCollector(Collector):
    def __init__(
        self,
        hub: Hub,
        stats: StreamStats,
        admission: Admission,
        ready: Callable[[], bool],
        counters: dict[str, Callable[[], float]],
        gauges: dict[str, Callable[[], float]],
    ) -> None:
        self.hub = hub
        self.stats = stats
        self.admission = admission
        self.ready = ready
        self.counters = counters
        self.gauges = gauges

    def collect(self) -> Any:
        hub, stats = self.hub.stats, self.stats
        # Which process answered: with ``--workers N`` a scrape reaches one of them.
        yield InfoMetricFamily("signalbus_worker", "This worker process", {"pid": str(os.getpid())})
        yield GaugeMetricFamily(
            "signalbus_broker_ready", "1 when the broker is connected", value=int(self.ready())
        )
        for name, read in self.counters.items():
            yield CounterMetricFamily(name, name.replace("_", " "), value=read())
        for name, read in self.gauges.items():
            yield GaugeMetricFamily(name, name.replace("_", " "), value=read())
        yield GaugeMetricFamily("signalbus_sse_streams", "Open SSE streams", value=stats.open)
        yield CounterMetricFamily(
            "signalbus_sse_streams_opened", "SSE streams opened", value=stats.opened
        )
        yield CounterMetricFamily(
            "signalbus_sse_busy",
            "SSE streams turned away (retry later) because the worker was full",
            value=self.admission.busy,
        )
        rejected = CounterMetricFamily(
            "signalbus_sse_rejected", "SSE requests refused, by status", labels=["status"]
        )
        for status, count in sorted(stats.rejected.items()):
            rejected.add_metric([str(status)], count)
        yield rejected
        yield CounterMetricFamily(
            "signalbus_events_received", "Events taken into the hub", value=hub.events_received
        )
        yield CounterMetricFamily(
            "signalbus_frames_queued", "Event frames queued for streams", value=hub.frames_queued
        )
        yield CounterMetricFamily(
            "signalbus_slow_client_disconnects",
            "Streams closed because their client did not keep up",
            value=hub.overflow_disconnects + stats.send_timeouts,
        )
        yield CounterMetricFamily("signalbus_replays", "Last-Event-ID resumes", value=hub.replays)
        yield CounterMetricFamily(
            "signalbus_resets", "signalbus.reset events sent", value=hub.resets
        )
