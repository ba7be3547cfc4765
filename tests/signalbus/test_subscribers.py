"""``@signalbus.subscriber``: registration, names and discovery (`signalbus.subscribers`)."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import signalbus
from signalbus import ConfigurationError, Event, InvalidTopic
from signalbus.subscribers import Registry, Subscriber, discover, registry, subscriber


@pytest.fixture(autouse=True)
def fresh_registry() -> Iterator[None]:
    """Whatever a test registers is gone after it: the registry is the process's."""
    before = {s.name for s in registry}
    yield
    for sub in registry:
        if sub.name not in before:
            registry.remove(sub.name)


def on_paid(event: Event) -> None:
    """A subscriber defined at module level, as a project's would be."""


def test_the_decorator_registers_the_function_and_returns_it_unchanged() -> None:
    decorated = subscriber("shop.order.*.paid")(on_paid)
    assert decorated is on_paid
    [registered] = [s for s in registry if s.func is on_paid]
    assert registered == Subscriber(
        "tests.signalbus.test_subscribers.on_paid", "shop.order.*.paid", on_paid, retries=5
    )


def test_the_facade_exports_the_decorator_lazily() -> None:
    assert "subscriber" in signalbus.__all__
    assert signalbus.subscriber is subscriber


def test_name_and_retries_can_be_given() -> None:
    subscriber("billing.#", name="billing-mailer", retries=0)(on_paid)
    assert "billing-mailer" in registry
    assert [s.retries for s in registry if s.name == "billing-mailer"] == [0]


def test_a_bad_pattern_is_invalid_topic_at_decoration() -> None:
    with pytest.raises(InvalidTopic, match=r"bad pattern 'shop\.\.order'"):
        subscriber("shop..order")


def test_two_subscribers_may_not_share_a_name() -> None:
    subscriber("a.#", name="same")(on_paid)
    with pytest.raises(ConfigurationError, match=r"two subscribers named 'same' \(.*on_paid and"):
        subscriber("b.#", name="same")(lambda event: None)


def test_a_name_that_cannot_name_a_queue_asks_for_name() -> None:
    def outer() -> None:
        @subscriber("a.#")
        def inner(event: Event) -> None: ...

    with pytest.raises(ConfigurationError, match=r"<locals>.*pass name="):
        outer()
    with pytest.raises(ConfigurationError, match="retries must be a whole number >= 0"):
        subscriber("a.#", name="negative", retries=-1)(on_paid)
    assert "negative" not in registry


def test_registries_are_independent() -> None:
    mine = Registry()
    mine.add(Subscriber("only-here", "a.#", on_paid))
    assert [s.name for s in mine] == ["only-here"]
    assert "only-here" not in registry


def test_discover_imports_the_listed_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "discovered_hooks.py").write_text(
        textwrap.dedent(
            """
            import signalbus

            @signalbus.subscriber("hooks.#")
            def hook(event):
                pass
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        names = [s.name for s in discover(["discovered_hooks"])]
    finally:
        sys.modules.pop("discovered_hooks", None)
    assert "discovered_hooks.hook" in names


def test_discover_of_a_missing_module_is_one_line() -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"SIGNALBUS\['SUBSCRIBERS'\]: cannot import 'no_such_hooks': No module named",
    ):
        discover(["no_such_hooks"])
