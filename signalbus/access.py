"""Who may subscribe to what (DESIGN.md, "The SSE endpoint", Access).

Default-deny: a pattern is allowed only when it lies *inside* a granted
pattern (`signalbus.topics.pattern_within`): inside ``PUBLIC_TOPICS``, or
granted by ``SIGNALBUS["AUTHORIZE"](user, pattern)`` for the user of the
Django session cookie. A request with no credentials asking for anything
not public gets 401; a logged-in user asking beyond the grant gets 403.

A signed token (`signalbus.tokens`) replaces the session: when one is
presented, a forged, malformed or expired token gets 401, and each pattern must
lie inside one of the token's patterns (or be public), else 403.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from .conf import Settings
from .errors import InvalidToken
from .tokens import Grant, verify_token
from .topics import pattern_within

__all__ = ["Decision", "decide", "is_public", "session_user"]


@dataclass(frozen=True)
class Decision:
    """The outcome for one request: HTTP status (200, 401 or 403), the reason, the
    grant of the token it was allowed by (its expiry ends the stream), and the user
    it was allowed for (the key of the per-user stream limit)."""

    status: int
    reason: str = ""
    grant: Grant | None = None
    user: str | None = None

    @property
    def allowed(self) -> bool:
        return self.status == 200


def is_public(pattern: str, public: Sequence[str]) -> bool:
    return any(pattern_within(pattern, granted) for granted in public)


def session_user(cookies: Mapping[str, str]) -> Any:
    """The user of the Django session cookie, through the project's own session engine
    and auth backends (the same user the site sees), or None. Blocking: run in a thread."""
    from django.conf import settings
    from django.db import close_old_connections

    session_key = cookies.get(settings.SESSION_COOKIE_NAME)
    if not session_key or "django.contrib.auth" not in settings.INSTALLED_APPS:
        return None
    from django.contrib.auth import get_user
    from django.http import HttpRequest

    close_old_connections()
    try:
        request = HttpRequest()
        request.session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
        user = get_user(request)
        return user if user.is_authenticated else None
    finally:
        close_old_connections()


def decide(
    patterns: Sequence[str], settings: Settings, user: Any, token: str | None = None
) -> Decision:
    """Whether every pattern is allowed; blocking when AUTHORIZE touches the database.

    ``token`` is the token presented (None when there is none); with one, ``user``
    is not consulted."""
    grant = None
    if token is not None:
        try:
            grant = verify_token(token)
        except InvalidToken as exc:
            return Decision(401, str(exc))
    private = [p for p in patterns if not is_public(p, settings.public_topics)]
    if grant is not None:
        for pattern in private:
            if not any(pattern_within(pattern, granted) for granted in grant.patterns):
                return Decision(403, f"pattern {pattern!r} is not allowed by this token")
        return Decision(200, grant=grant, user=grant.user_id)
    if not private:
        return Decision(200)
    if user is None:
        return Decision(
            401, f"pattern {private[0]!r} is not public; log in or present a token to read it"
        )
    authorize = settings.authorize
    for pattern in private:
        if authorize is None or not authorize(user, pattern):
            return Decision(403, f"pattern {pattern!r} is not allowed for this user")
    return Decision(200, user=str(user.pk))
