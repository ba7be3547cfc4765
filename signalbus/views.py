"""Django views for browsers: a fresh stream token for the logged-in user.

``path("signalbus/", include("signalbus.urls"))`` serves ``GET signalbus/token/?topic=P``:
``{"token": ..., "url": ..., "expires": ...}`` for patterns the user may read (public,
or allowed by ``SIGNALBUS["AUTHORIZE"]``). A GET that changes nothing, so it needs no
CSRF token; it sends no CORS headers, so another origin cannot read the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse

from .access import decide
from .conf import get_settings
from .errors import InvalidTopic
from .tokens import issue_token, verify_token
from .topics import validate_pattern

__all__ = ["stream_url", "token_view"]


def stream_url(patterns: Sequence[str], token: str, base: str | None = None) -> str:
    """The worker's stream URL for ``patterns`` carrying ``token``."""
    query = urlencode([("topic", p) for p in patterns] + [("token", token)])
    return f"{base or get_settings().events_url}?{query}"


def _answer(body: dict[str, Any], status: int = 200) -> JsonResponse:
    response = JsonResponse(body, status=status)
    response["Cache-Control"] = "no-store"
    response["X-Content-Type-Options"] = "nosniff"
    response["Vary"] = "Cookie"
    return response


def token_view(request: HttpRequest) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return _answer({"error": "log in to get a stream token"}, 401)
    patterns = request.GET.getlist("topic")
    if not patterns:
        return _answer({"error": "give at least one ?topic=PATTERN"}, 400)
    settings = get_settings()
    if len(patterns) > settings.max_topics:  # as many as the worker accepts on one stream
        return _answer({"error": f"at most {settings.max_topics} patterns per token"}, 400)
    try:
        for pattern in patterns:
            validate_pattern(pattern)
    except InvalidTopic as exc:
        return _answer({"error": str(exc)}, 400)
    decision = decide(patterns, settings, user)
    if not decision.allowed:
        return _answer({"error": decision.reason}, 403)
    token = issue_token(patterns, user=user)
    return _answer(
        {
            "token": token,
            "url": stream_url(patterns, token, settings.events_url),
            "expires": verify_token(token).expires,
        }
    )
