"""Ready rules for ``SIGNALBUS["AUTHORIZE"]``, each a ``rule(user, pattern) -> bool``.

A rule grants the patterns that lie *inside* one pattern of its own
(`signalbus.topics.pattern_within`), never a wider one: ``own_topics()`` lets
user 7 read ``user.7.#`` or ``user.7.inbox``, but not ``user.#`` nor ``user.70.x``.
Combine them with `any_of`::

    from signalbus import permissions

    SIGNALBUS = {
        "AUTHORIZE": permissions.any_of(
            permissions.own_topics(),                    # user.<own pk>.#
            permissions.has_model_perm("shop.Order"),    # shop.order.# with shop.view_order
            permissions.is_staff("ops.#"),               # ops.# for active staff
        ),
    }

Importing this module needs no configured Django: it is safe in a settings file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .topics import pattern_within, validate_pattern

__all__ = ["Rule", "any_of", "has_model_perm", "is_staff", "own_topics"]

Rule = Callable[[Any, str], bool]


def own_topics(prefix: str = "user") -> Rule:
    """Each user reads ``<prefix>.<own pk>.#``: per-user private streams."""
    validate_pattern(f"{prefix}.0.#")

    def rule(user: Any, pattern: str) -> bool:
        return user.pk is not None and pattern_within(pattern, f"{prefix}.{user.pk}.#")

    return rule


def is_staff(within: str = "#") -> Rule:
    """Active staff users read the patterns inside ``within``; nobody else does."""
    validate_pattern(within)

    def rule(user: Any, pattern: str) -> bool:
        return bool(user.is_active and user.is_staff) and pattern_within(pattern, within)

    return rule


def has_model_perm(model: str, action: str = "view") -> Rule:
    """Users with the model's Django permission (``shop.view_order`` for "shop.Order")
    read its events: the patterns inside ``<app_label>.<model_name>.#``."""
    app_label, dot, name = model.partition(".")
    if not dot or not app_label or not name or "." in name:
        raise ValueError(f"model must be 'app_label.ModelName', not {model!r}")
    model_name = name.lower()
    within = validate_pattern(f"{app_label}.{model_name}.#")
    permission = f"{app_label}.{action}_{model_name}"

    def rule(user: Any, pattern: str) -> bool:
        return pattern_within(pattern, within) and bool(user.has_perm(permission))

    return rule


def any_of(*rules: Rule) -> Rule:
    """Allowed when one of ``rules`` allows it."""

    def rule(user: Any, pattern: str) -> bool:
        return any(each(user, pattern) for each in rules)

    return rule
