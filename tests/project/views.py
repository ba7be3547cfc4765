"""A page of the test site that uses signalbus.js as a real site would."""

from __future__ import annotations

import json

from django.conf import settings
from django.contrib.auth import get_user_model, login
from django.http import HttpRequest, HttpResponse

from signalbus.tokens import issue_token
from signalbus.views import stream_url
from tests.helpers import ROOT

PAGE = """<!doctype html><title>signalbus</title>
<script>{js}</script>
<script>
  // Count the streams the helper opens (the browser's own reconnects reuse one).
  const Native = window.EventSource;
  window.streams = [];
  window.EventSource = class extends Native {{
    constructor(url, options) {{ super(url, options); window.streams.push(url); }}
  }};
  window.got = [];
  const bus = new SignalBus({{url: {url}, tokenUrl: "/signalbus/token/"}});
  bus.on("user.#", (event) => window.got.push(event.id));
  bus.on("signalbus.reset", () => window.got.push("reset"));
</script>
"""


def bus_page(request: HttpRequest) -> HttpResponse:
    """Logs ``ada`` in and opens her stream with a token that lives ``?ttl=`` seconds."""
    user, _ = get_user_model().objects.get_or_create(username="ada")
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    pattern = f"user.{user.pk}.#"
    token = issue_token([pattern], user=user, ttl=int(request.GET.get("ttl", "60")))
    url = stream_url([pattern], token, settings.SIGNALBUS["EVENTS_URL"])
    js = (ROOT / "signalbus" / "static" / "signalbus" / "signalbus.js").read_text()
    return HttpResponse(PAGE.format(js=js, url=json.dumps(url)))
