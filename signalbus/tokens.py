"""Signed subscription tokens (DESIGN.md, "Python API": ``issue_token``).

A token is ``django.core.signing.dumps`` of ``{"t": [patterns], "u": user id or
None, "e": expiry in epoch seconds}`` under its own salt: URL-safe, checked in
constant time, and ``SECRET_KEY_FALLBACKS`` keep tokens signed under a rotated
key valid until the old key is dropped. Error messages never echo the token.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InvalidToken, InvalidTopic
from .topics import validate_pattern

__all__ = ["SALT", "Grant", "issue_token", "verify_token"]

SALT = "signalbus.tokens"


@dataclass(frozen=True)
class Grant:
    """What a valid token allows: these patterns, for this user, until ``expires``."""

    patterns: tuple[str, ...]
    user_id: str | None
    expires: int

    def remaining(self, now: float | None = None) -> float:
        """Seconds until the token expires (0 once it has)."""
        return max(0.0, self.expires - (time.time() if now is None else now))


def issue_token(topics: Sequence[str], user: Any = None, ttl: int = 3600) -> str:
    """A token letting its bearer subscribe to ``topics`` (patterns) for ``ttl`` seconds."""
    from django.core import signing

    if isinstance(topics, str):
        raise TypeError("topics must be a sequence of patterns, not one string")
    patterns = [validate_pattern(p) for p in topics]
    if not patterns:
        raise ValueError("a token needs at least one pattern")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
        raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
    user_id = None if user is None or getattr(user, "pk", None) is None else str(user.pk)
    payload = {"t": patterns, "u": user_id, "e": int(time.time()) + ttl}
    token: str = signing.dumps(payload, salt=SALT, compress=True)
    return token


def verify_token(token: str, *, now: float | None = None) -> Grant:
    """The grant of a valid token; ``InvalidToken`` saying why otherwise."""
    from django.core import signing

    if not isinstance(token, str) or not token:
        raise InvalidToken("token is empty")
    try:
        payload = signing.loads(token, salt=SALT)
    except signing.BadSignature:
        raise InvalidToken("token signature is invalid") from None
    except Exception:  # a valid signature over undecodable data
        raise InvalidToken("token payload is malformed") from None
    if not isinstance(payload, dict) or set(payload) != {"t", "u", "e"}:
        raise InvalidToken("token payload is malformed")
    patterns, user_id, expires = payload["t"], payload["u"], payload["e"]
    if (
        not isinstance(patterns, list)
        or not patterns
        or not all(isinstance(p, str) for p in patterns)
        or not (user_id is None or isinstance(user_id, str))
        or isinstance(expires, bool)
        or not isinstance(expires, int)
    ):
        raise InvalidToken("token payload is malformed")
    try:
        patterns = [validate_pattern(p) for p in patterns]
    except InvalidTopic:
        raise InvalidToken("token payload holds an invalid pattern") from None
    if (time.time() if now is None else now) >= expires:
        raise InvalidToken("token has expired")
    return Grant(tuple(patterns), user_id, expires)
