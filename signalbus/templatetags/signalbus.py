"""``{% load signalbus %}{% signalbus_url "shop.order.42.*" %}``: the worker's stream URL
with a fresh token for the request's user.

The tag grants what the template names, without asking ``AUTHORIZE``: the template is
the project's own code. Name only patterns the page's user may read.
"""

from __future__ import annotations

from typing import Any

from django import template

from ..tokens import issue_token
from ..topics import validate_pattern
from ..views import stream_url

register = template.Library()


@register.simple_tag(takes_context=True)  # type: ignore[untyped-decorator]  # Django is untyped
def signalbus_url(context: template.Context, *patterns: str) -> str:
    if not patterns:
        raise template.TemplateSyntaxError("signalbus_url needs one pattern at least")
    for pattern in patterns:
        validate_pattern(pattern)
    request = context.get("request")
    user: Any = getattr(request, "user", None)
    if user is not None and not user.is_authenticated:
        user = None
    return stream_url(patterns, issue_token(patterns, user=user))
