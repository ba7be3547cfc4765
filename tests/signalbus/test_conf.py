"""``settings.SIGNALBUS`` and the broker URL (DESIGN.md, "Settings")."""

from __future__ import annotations

from typing import Any

import pytest

from signalbus import ConfigurationError
from signalbus.conf import (
    DEFAULT_BROKER_URL,
    ENV_BROKER_URL,
    Settings,
    broker_url,
    get_settings,
    mask_url,
    parse_settings,
)
from signalbus.topics import matches


def test_defaults_are_the_documented_ones() -> None:
    parsed = parse_settings({})
    assert parsed == Settings()
    assert parsed.broker_url == DEFAULT_BROKER_URL == "zmq://127.0.0.1:5560"
    assert parsed.public_topics == ()
    assert parsed.authorize is None
    assert parsed.allowed_origins == ()
    assert parsed.models == {}
    assert parsed.client_queue == 1_000
    assert parsed.keepalive == 15.0
    assert parsed.replay_buffer > 0
    assert parsed.retry_ms > 0


def test_full_settings_are_read() -> None:
    parsed = parse_settings(
        {
            "BROKER_URL": "amqp://guest:guest@127.0.0.1:5672/",
            "MODELS": {"shop.Order": {"fields": ["id", "status"]}},
            "PUBLIC_TOPICS": ["shop.order.#"],
            "AUTHORIZE": "signalbus.topics.matches",
            "ALLOWED_ORIGINS": ["https://app.example/"],
            "REPLAY_BUFFER": 50,
            "CLIENT_QUEUE": 10,
            "KEEPALIVE": 2,
            "RETRY_MS": 500,
            "SOURCE": "//web-1.example",
            "ZMQ_CONNECT_TIMEOUT": 0.5,
        }
    )
    assert parsed.broker_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert parsed.models == {"shop.Order": {"fields": ["id", "status"]}}
    assert parsed.public_topics == ("shop.order.#",)
    assert parsed.authorize is matches
    assert parsed.allowed_origins == ("https://app.example",)
    assert (parsed.replay_buffer, parsed.client_queue, parsed.retry_ms) == (50, 10, 500)
    assert parsed.keepalive == 2.0
    assert isinstance(parsed.keepalive, float)
    assert parsed.source == "//web-1.example"
    assert parsed.zmq_connect_timeout == 0.5


def test_authorize_may_be_a_callable() -> None:
    def allow(user: object, pattern: str) -> bool:
        return True

    assert parse_settings({"AUTHORIZE": allow}).authorize is allow


def test_unknown_key_is_rejected_naming_it_and_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown SIGNALBUS key.*BROKER") as info:
        parse_settings({"BROKER": "memory://", "BROKER_URL": "memory://"})
    assert "known: " in str(info.value)
    assert "BROKER_URL" in str(info.value)


def test_settings_that_are_not_a_dict_are_rejected() -> None:
    with pytest.raises(ConfigurationError, match="must be a dict"):
        parse_settings(["BROKER_URL"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "key", ["REPLAY_BUFFER", "CLIENT_QUEUE", "KEEPALIVE", "RETRY_MS", "ZMQ_CONNECT_TIMEOUT"]
)
@pytest.mark.parametrize("value", [0, -1, "10", True, None])
def test_non_positive_or_non_numeric_sizes_are_rejected(key: str, value: object) -> None:
    with pytest.raises(
        ConfigurationError, match=rf"SIGNALBUS\['{key}'\] must be a positive number"
    ):
        parse_settings({key: value})


@pytest.mark.parametrize("value", ["//web-1\r\nX-Evil: 1", "//a\nb", "//a\x00", 42])
def test_a_source_that_cannot_go_into_an_event_is_rejected(value: object) -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"SIGNALBUS\['SOURCE'\] must be a string without CR, LF or NUL",
    ):
        parse_settings({"SOURCE": value})


@pytest.mark.parametrize("value", ["", None])
def test_an_empty_source_is_the_default(value: object) -> None:
    assert parse_settings({"SOURCE": value}).source is None  # //<hostname> in events


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"PUBLIC_TOPICS": "shop.#"}, "PUBLIC_TOPICS'] must be a list of patterns"),
        ({"PUBLIC_TOPICS": ["shop..x"]}, "PUBLIC_TOPICS'\\]: bad pattern 'shop..x'"),
        ({"PUBLIC_TOPICS": [42]}, "PUBLIC_TOPICS'\\]: a pattern must be a string"),
        ({"MODELS": ["shop.Order"]}, "MODELS'\\] must map"),
        ({"ALLOWED_ORIGINS": "https://app.example"}, "ALLOWED_ORIGINS'\\] must be a list"),
        ({"ALLOWED_ORIGINS": [42]}, "ALLOWED_ORIGINS'\\] must be a list"),
        ({"ALLOWED_ORIGINS": None}, "ALLOWED_ORIGINS'\\] must be a list"),
        ({"AUTHORIZE": 42}, "AUTHORIZE'\\] must be a callable or its dotted path"),
        (
            {"AUTHORIZE": "no_such_module.allow"},
            "AUTHORIZE'\\]: cannot import 'no_such_module.allow'",
        ),
        ({"AUTHORIZE": "signalbus.topics.no_such_function"}, "AUTHORIZE'\\]: cannot import"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_settings(raw)


def test_configuration_error_is_not_a_value_error() -> None:
    # A retry cannot help and callers must not mistake it for bad user input.
    assert not issubclass(ConfigurationError, ValueError)


def test_get_settings_reads_the_django_setting(settings: Any) -> None:
    settings.SIGNALBUS = {"BROKER_URL": "memory://from-settings", "CLIENT_QUEUE": 7}
    assert get_settings().broker_url == "memory://from-settings"
    assert get_settings().client_queue == 7


def test_get_settings_without_the_setting_gives_the_defaults(settings: Any) -> None:
    del settings.SIGNALBUS
    assert get_settings() == Settings()


def test_get_settings_checks_the_django_setting(settings: Any) -> None:
    settings.SIGNALBUS = {"BROKER_ULR": "memory://"}
    with pytest.raises(ConfigurationError, match="BROKER_ULR"):
        get_settings()


# -- broker URL precedence ----------------------------------------------------------------

CONFIGURED = Settings(broker_url="memory://from-setting")


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv(ENV_BROKER_URL, raising=False)
    return monkeypatch


def test_command_line_broker_wins_over_everything(no_env: pytest.MonkeyPatch) -> None:
    no_env.setenv(ENV_BROKER_URL, "memory://from-env")
    assert broker_url("memory://from-cli", CONFIGURED) == "memory://from-cli"


def test_environment_wins_over_the_setting(no_env: pytest.MonkeyPatch) -> None:
    no_env.setenv(ENV_BROKER_URL, "memory://from-env")
    assert broker_url(None, CONFIGURED) == "memory://from-env"


def test_setting_wins_over_the_default(no_env: pytest.MonkeyPatch) -> None:
    assert broker_url(None, CONFIGURED) == "memory://from-setting"


def test_default_when_nothing_is_given(no_env: pytest.MonkeyPatch) -> None:
    assert broker_url(None, Settings()) == DEFAULT_BROKER_URL


def test_empty_environment_variable_counts_as_unset(no_env: pytest.MonkeyPatch) -> None:
    no_env.setenv(ENV_BROKER_URL, "")
    assert broker_url(None, CONFIGURED) == "memory://from-setting"


def test_broker_url_reads_django_settings_when_not_given_any(
    no_env: pytest.MonkeyPatch, settings: Any
) -> None:
    settings.SIGNALBUS = {"BROKER_URL": "memory://from-django"}
    assert broker_url() == "memory://from-django"
    no_env.setenv(ENV_BROKER_URL, "memory://from-env")
    assert broker_url() == "memory://from-env"
    assert broker_url("memory://from-cli") == "memory://from-cli"


# -- masking ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://guest:secret@127.0.0.1:5672/", "amqp://guest:**@127.0.0.1:5672/"),
        (
            "amqps://user:s3cr%40t@rabbit.example:5671/prod?heartbeat=30",
            "amqps://user:**@rabbit.example:5671/prod?heartbeat=30",
        ),
        ("amqp://:secret@host/", "amqp://:**@host/"),
        ("amqp://user:@host/", "amqp://user:**@host/"),
        ("amqp://guest:secret@[::1]:5672/", "amqp://guest:**@[::1]:5672/"),
        ("amqp://guest:secret@host:notaport/", "amqp://guest:**@host:notaport/"),
        ("amqp://user@host/", "amqp://user@host/"),
        ("zmq://127.0.0.1:5560", "zmq://127.0.0.1:5560"),
        ("memory://", "memory://"),
    ],
)
def test_mask_url_hides_the_password_only(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_mask_url_of_an_unparsable_url_shows_no_part_of_it() -> None:
    assert mask_url("amqp://guest:secret@[::1:5672/") == "<unparsable URL>"


def test_subscriber_settings_are_read_and_checked() -> None:
    assert (Settings().subscribers, Settings().subscriber_threads) == ((), 4)
    parsed = parse_settings({"SUBSCRIBERS": ["shop.subscribers", "hooks"], "SUBSCRIBER_THREADS": 8})
    assert (parsed.subscribers, parsed.subscriber_threads) == (("shop.subscribers", "hooks"), 8)
    for modules in ("shop.subscribers", ["shop..x"], [42], ["shop-x"]):
        with pytest.raises(ConfigurationError, match="SUBSCRIBERS'] must be a list of dotted"):
            parse_settings({"SUBSCRIBERS": modules})
    for threads in (0, -1, "4", True):
        with pytest.raises(ConfigurationError, match="SUBSCRIBER_THREADS'] must be a positive"):
            parse_settings({"SUBSCRIBER_THREADS": threads})
