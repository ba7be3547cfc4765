"""The browser helpers: the ``signalbus_url`` tag, the token view and signalbus.js."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.template import Context, Engine
from django.test import Client, RequestFactory

from signalbus.tokens import verify_token
from signalbus.topics import matches

from ..helpers import ROOT

pytestmark = pytest.mark.django_db
JS = ROOT / "signalbus" / "static" / "signalbus" / "signalbus.js"
TOKEN_URL = "/signalbus/token/"


@pytest.fixture
def user() -> Any:
    return get_user_model().objects.create_user("ada", password="pw-ada")


@pytest.fixture
def client_in(client: Client, user: Any) -> Client:
    client.force_login(user)
    return client


ENGINE = Engine(libraries={"signalbus": "signalbus.templatetags.signalbus"})


def render(user: Any, *patterns: str) -> str:
    request = RequestFactory().get("/")
    request.user = user
    args = " ".join(f'"{p}"' for p in patterns)
    text = ENGINE.from_string("{% load signalbus %}{% signalbus_url " + args + " %}")
    return text.render(Context({"request": request}))


def test_tag_renders_stream_url_with_token_for_the_user(user: Any) -> None:
    rendered = render(user, "shop.order.42.*", f"user.{user.pk}.#")
    assert "&amp;" in rendered  # escaped by the template engine
    url = urlsplit(html.unescape(rendered))
    assert f"{url.scheme}://{url.netloc}{url.path}" == "http://127.0.0.1:8001/events"
    query = parse_qs(url.query)
    assert query["topic"] == ["shop.order.42.*", f"user.{user.pk}.#"]
    grant = verify_token(query["token"][0])
    assert grant.patterns == ("shop.order.42.*", f"user.{user.pk}.#")
    assert grant.user_id == str(user.pk)
    assert grant.expires > time.time()


def test_tag_anonymous_user_and_events_url_setting(settings: Any) -> None:
    settings.SIGNALBUS = {**settings.SIGNALBUS, "EVENTS_URL": "https://rt.example/events"}
    url = urlsplit(html.unescape(render(AnonymousUser(), "public.news")))
    assert url.netloc == "rt.example"
    assert verify_token(parse_qs(url.query)["token"][0]).user_id is None


def test_token_view_anonymous_401(client: Client) -> None:
    response = client.get(TOKEN_URL, {"topic": "shop.#"})
    assert response.status_code == 401
    assert "error" in response.json()
    assert response["Cache-Control"] == "no-store"


@pytest.mark.parametrize("query", [{"topic": "shop..x"}, {"topic": "a.b#"}, {}])
def test_token_view_bad_pattern_400(client_in: Client, query: dict[str, str]) -> None:
    response = client_in.get(TOKEN_URL, query)
    assert response.status_code == 400
    assert "error" in response.json()


def test_token_view_forbidden_pattern_403(client_in: Client, user: Any) -> None:
    other = f"user.{user.pk + 1}.#"
    response = client_in.get(TOKEN_URL, {"topic": ["shop.#", other]})
    assert response.status_code == 403
    assert other in response.json()["error"]
    assert response["Cache-Control"] == "no-store"


def test_token_view_allowed_200(client_in: Client, user: Any) -> None:
    mine = f"user.{user.pk}.orders.*"
    response = client_in.get(
        TOKEN_URL, {"topic": ["shop.order.*", mine]}, headers={"Origin": "http://app.example"}
    )
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert not any(h.lower().startswith("access-control-") for h in response.headers)
    body = response.json()
    grant = verify_token(body["token"])
    assert grant.patterns == ("shop.order.*", mine)
    assert grant.user_id == str(user.pk)
    assert body["expires"] == grant.expires
    query = parse_qs(urlsplit(body["url"]).query)
    assert query == {"topic": ["shop.order.*", mine], "token": [body["token"]]}


def test_token_view_get_only(client_in: Client) -> None:
    assert client_in.post(TOKEN_URL, {"topic": "shop.#"}).status_code == 405


CASES = [
    (pattern, topic)
    for pattern in [
        "a", "a.b", "*", "#", "a.*", "a.#", "#.c", "*.b.*", "a.#.c", "#.#", "a.#.#.c",
        "#.b.#", "*.#", "#.*", "a.*.#", "#.a.#.a.#", "shop.order.*.updated", "x.*.*",
    ]
    for topic in [
        "a", "b", "a.b", "a.c", "a.b.c", "a.b.b.c", "a.x.c.c", "a.a", "a.a.a",
        "shop.order.42.updated", "shop.order.42.created", "x.y", "x.y.z", "b.a.b.a.b",
    ]
]  # fmt: skip


def test_js_matcher_agrees_with_python() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: signalbus.js's matcher cannot be run")
    table = [[p, t, matches(p, t)] for p, t in CASES]
    script = (
        f"const {{topicMatches}} = require({json.dumps(str(JS))});\n"
        f"const table = {json.dumps(table)};\n"
        "const wrong = table.filter(([p, t, want]) => topicMatches(p, t) !== want);\n"
        "process.stdout.write(JSON.stringify(wrong));\n"
    )
    done = subprocess.run(
        [node, "-e", script], capture_output=True, text=True, timeout=30, check=True
    )
    assert json.loads(done.stdout) == []
    assert sum(want for _, _, want in table) > 20  # both outcomes are covered


def test_js_parses_as_a_script_in_node() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: signalbus.js cannot be checked")
    subprocess.run([node, "--check", str(JS)], check=True, timeout=30)
