"""The test project's AUTHORIZE: each user may read ``user.<own id>.#`` and nothing else."""

from typing import Any

from signalbus.topics import pattern_within


def can_subscribe(user: Any, pattern: str) -> bool:
    return pattern_within(pattern, f"user.{user.pk}.#")
