"""Signed subscription tokens: what verifies, what does not, and why (no worker needed)."""

from __future__ import annotations

import time

import pytest
from django.core import signing
from django.test import override_settings

import signalbus
from signalbus.errors import InvalidToken, InvalidTopic, SignalbusError
from signalbus.tokens import SALT, Grant, issue_token, verify_token

OLD_KEY = "old-key-old-key-old-key-old-key-old-key-old-key-0123"
NEW_KEY = "new-key-new-key-new-key-new-key-new-key-new-key-4567"


class User:
    def __init__(self, pk: object) -> None:
        self.pk = pk


def test_round_trip():
    before = int(time.time())
    token = issue_token(["user.7.#", "shop.order.*"], user=User(7), ttl=60)
    grant = verify_token(token)
    assert grant == Grant(("user.7.#", "shop.order.*"), "7", grant.expires)
    assert before + 60 <= grant.expires <= int(time.time()) + 60
    assert 58 <= grant.remaining() <= 60
    assert verify_token(issue_token(["public.#"])).user_id is None


def test_token_is_url_safe():
    token = issue_token(["user.7.#"] * 5, user=User(7))
    assert all(c.isalnum() or c in "-_:." for c in token)


def test_invalid_token_is_a_signalbus_error_and_a_value_error():
    assert issubclass(InvalidToken, SignalbusError)
    assert issubclass(InvalidToken, ValueError)
    assert "InvalidToken" in signalbus.__all__
    assert signalbus.InvalidToken is InvalidToken


@pytest.mark.parametrize("ttl", [0, -5, 1.5, True, "60"])
def test_issue_rejects_a_bad_ttl(ttl):
    with pytest.raises(ValueError, match="ttl"):
        issue_token(["user.7.#"], ttl=ttl)


@pytest.mark.parametrize("pattern", ["", "user..x", "us*er.1", "a." * 200 + "b"])
def test_issue_rejects_a_bad_pattern(pattern):
    with pytest.raises(InvalidTopic):
        issue_token([pattern])


def test_tampered_token_fails():
    token = issue_token(["user.7.#"], user=User(7))
    payload, _, rest = token.partition(":")
    forged = signing.dumps({"t": ["#"], "u": "7", "e": 2**40}, salt=SALT, compress=True)
    spliced = forged.partition(":")[0] + ":" + rest
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    for bad in (spliced, flipped, token + "x", payload, "x" + token):
        with pytest.raises(InvalidToken, match="signature") as info:
            verify_token(bad)
        assert bad not in str(info.value)


def test_token_signed_with_another_salt_fails():
    other = signing.dumps({"t": ["#"], "u": None, "e": 2**40}, salt="other.salt", compress=True)
    unsalted = signing.dumps({"t": ["#"], "u": None, "e": 2**40})
    for bad in (other, unsalted):
        with pytest.raises(InvalidToken, match="signature"):
            verify_token(bad)


def test_a_django_signed_cookie_value_fails():
    cookie = signing.get_cookie_signer(salt="signalbus_token").sign("user.7.#")
    with pytest.raises(InvalidToken, match="signature"):
        verify_token(cookie)


def test_garbage_and_empty_fail():
    for bad in ("", "not-a-token", ":", "a:b:c", "\x00"):
        with pytest.raises(InvalidToken):
            verify_token(bad)


@pytest.mark.parametrize(
    "payload",
    [
        ["user.7.#"],
        {"t": ["user.7.#"], "u": None},
        {"t": "user.7.#", "u": None, "e": 2**40},
        {"t": [], "u": None, "e": 2**40},
        {"t": [7], "u": None, "e": 2**40},
        {"t": ["user.7.#"], "u": 7, "e": 2**40},
        {"t": ["user.7.#"], "u": None, "e": "2099"},
        {"t": ["user.7.#"], "u": None, "e": True},
        {"t": ["user.7.#"], "u": None, "e": 2**40, "x": 1},
    ],
)
def test_a_well_signed_malformed_payload_fails(payload):
    token = signing.dumps(payload, salt=SALT, compress=True)
    with pytest.raises(InvalidToken, match="malformed"):
        verify_token(token)


@pytest.mark.parametrize("pattern", ["user..x", "us*er", ""])
def test_a_well_signed_bad_pattern_fails(pattern):
    token = signing.dumps({"t": [pattern], "u": None, "e": 2**40}, salt=SALT, compress=True)
    with pytest.raises(InvalidToken, match="pattern"):
        verify_token(token)


def test_expired_token_fails():
    token = issue_token(["user.7.#"], ttl=10)
    grant = verify_token(token)
    assert verify_token(token, now=grant.expires - 1) == grant
    for now in (grant.expires, grant.expires + 3600):
        with pytest.raises(InvalidToken, match="expired") as info:
            verify_token(token, now=now)
        assert token not in str(info.value)
    assert grant.remaining(now=grant.expires + 5) == 0


def test_rotation_through_secret_key_fallbacks():
    with override_settings(SECRET_KEY=OLD_KEY, SECRET_KEY_FALLBACKS=[]):
        old = issue_token(["user.7.#"], user=User(7))
        assert verify_token(old).user_id == "7"
    with override_settings(SECRET_KEY=NEW_KEY, SECRET_KEY_FALLBACKS=[OLD_KEY]):
        assert verify_token(old).patterns == ("user.7.#",)
        new = issue_token(["user.7.#"], user=User(7))
        assert verify_token(new).user_id == "7"
    with override_settings(SECRET_KEY=NEW_KEY, SECRET_KEY_FALLBACKS=[]):
        with pytest.raises(InvalidToken, match="signature"):
            verify_token(old)
        assert verify_token(new).user_id == "7"
