"""Model saves and custom signals, published on commit through a real 0MQ socket to a real
worker, read back over SSE."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import subprocess
import sys
import threading
from dataclasses import replace
from decimal import Decimal

import pytest
from django.db import models, transaction
from django.db.models.signals import post_save
from django.dispatch import Signal
from django.test.utils import isolate_apps

import signalbus
from bridges.django_signals import (
    _resolve_fields,
    bind_model,
    bind_signal,
    set_broker,
    unbind_model,
)
from brokers.base import Broker, Consumer
from signalbus import Event
from signalbus.conf import get_settings
from signalbus.errors import ConfigurationError, InvalidEvent, InvalidTopic, PublishError
from tests.project.shop.models import Note, Order, Tenant

from ..helpers import ROOT, SSEReader, child_env

pytestmark = pytest.mark.django_db(transaction=True)


def stream(worker, *patterns: str) -> SSEReader:
    query = "&".join(f"topic={p.replace('#', '%23')}" for p in patterns)
    return SSEReader(f"{worker.url}/events?{query}")


def test_saved_order_reaches_the_stream_after_commit(bus):
    placed = dt.datetime(2026, 11, 30, 4, 40, 0, 123456, tzinfo=dt.UTC)
    with stream(bus, "shop.order.#") as reader:
        order = Order.objects.create(
            status="paid", total=Decimal("12.5000"), placed_at=placed, secret="canary-7f3a"
        )
        (event,) = reader.data(1)
    assert event["type"] == "shop.order.created"
    assert event["topic"] == f"shop.order.{order.pk}.created"
    assert event["subject"] == f"/orders/{order.pk}/"
    assert event["data"] == {
        "id": order.pk,
        "status": "paid",
        "total": "12.5000",
        "placed_at": "2026-11-30T04:40:00.123456+00:00",
    }
    assert dt.datetime.fromisoformat(event["data"]["placed_at"]) == placed
    assert Decimal(event["data"]["total"]) == order.total


def test_only_bound_fields_are_published(bus):
    with stream(bus, "shop.order.#") as reader:
        order = Order.objects.create(secret="canary-7f3a")
        order.secret = "canary-8e2b"
        order.save()
        order.delete()
        raw = [e.data for e in reader.take(3)]
    assert all("canary" not in data and "secret" not in data for data in raw)


def test_update_and_delete_events_carry_the_fields_as_they_were(bus):
    order = Order.objects.create(status="new")
    pk = order.pk
    with stream(bus, f"shop.order.{pk}.*") as reader:
        order.status = "shipped"
        order.save()
        order.delete()
        updated, deleted = reader.data(2)
    assert (updated["type"], updated["data"]["status"]) == ("shop.order.updated", "shipped")
    assert deleted["topic"] == f"shop.order.{pk}.deleted"
    assert deleted["data"]["id"] == pk
    assert deleted["data"]["status"] == "shipped"


def test_rolled_back_save_publishes_nothing(bus):
    with stream(bus, "shop.order.#", "public.#") as reader:
        with pytest.raises(RuntimeError), transaction.atomic():  # noqa: PT012
            Order.objects.create(status="doomed")
            raise RuntimeError("roll back")
        signalbus.publish("public.marker")
        (first,) = reader.data(1)
        reader.assert_quiet()
    assert first["topic"] == "public.marker"


def test_nested_atomic_blocks_publish_as_on_commit_does(bus):
    with stream(bus, "shop.order.#") as reader:
        with transaction.atomic():
            kept = Order.objects.create(status="outer")
            try:
                with transaction.atomic():
                    Order.objects.create(status="inner-doomed")
                    raise ValueError
            except ValueError:
                pass
            after = Order.objects.create(status="outer-after-rollback")
            with transaction.atomic():
                inner = Order.objects.create(status="inner-kept")
            reader.assert_quiet(0.3)  # nothing leaves before the outermost commit
        events = reader.data(3)
        reader.assert_quiet()
    assert [e["data"]["id"] for e in events] == [kept.pk, after.pk, inner.pk]


def test_saves_of_one_transaction_share_one_commit_entry_in_order(bus):
    with stream(bus, "shop.order.#") as reader:
        with transaction.atomic():
            orders = [Order.objects.create(status=f"bulk-{i}") for i in range(5)]
            assert len(transaction.get_connection().run_on_commit) == 1
        events = reader.data(5)
    assert [e["data"]["id"] for e in events] == [o.pk for o in orders]


@pytest.mark.django_db  # inside the atomic blocks of a TestCase, which never commit
def test_in_a_test_case_each_event_is_a_commit_callback_of_its_own(
    bus, django_capture_on_commit_callbacks
):
    with stream(bus, "shop.order.#") as reader:
        with django_capture_on_commit_callbacks(execute=True) as first:
            one = Order.objects.create(status="captured-1")
        with django_capture_on_commit_callbacks(execute=True) as second:
            two = Order.objects.create(status="captured-2")
            three = Order.objects.create(status="captured-3")
        events = reader.data(3)
        reader.assert_quiet()
    assert (len(first), len(second)) == (1, 2)
    assert [e["data"]["id"] for e in events] == [one.pk, two.pk, three.pk]


def test_under_an_outer_block_a_test_case_still_gets_a_commit_callback_per_event(
    bus, django_capture_on_commit_callbacks
):
    with stream(bus, "shop.order.#") as reader:
        with transaction.atomic():  # a fixture's block, around the test case's own
            test_case = transaction.atomic()
            test_case._from_testcase = True  # as TestCase enters its blocks
            test_case.__enter__()
            with django_capture_on_commit_callbacks(execute=True) as first:
                one = Order.objects.create(status="captured-1")
            with django_capture_on_commit_callbacks(execute=True) as second:
                two = Order.objects.create(status="captured-2")
            transaction.set_rollback(True)
            test_case.__exit__(None, None, None)
            transaction.set_rollback(True)
        events = reader.data(2)
        reader.assert_quiet()
    assert (len(first), len(second)) == (1, 1)
    assert [e["data"]["id"] for e in events] == [one.pk, two.pk]


def test_a_commit_hook_registered_between_saves_runs_between_their_events(bus):
    with stream(bus, "shop.order.#", "public.#") as reader:
        with transaction.atomic():
            first = Order.objects.create(status="before-hook")
            transaction.on_commit(lambda: signalbus.publish("public.hook.ran"))
            second = Order.objects.create(status="after-hook")
        events = reader.data(3)
    assert [e["topic"] for e in events] == [
        f"shop.order.{first.pk}.created",
        "public.hook.ran",
        f"shop.order.{second.pk}.created",
    ]


def test_a_save_in_manual_transaction_mode_is_refused_as_on_commit_refuses_it(bus):
    transaction.set_autocommit(False)
    try:
        with pytest.raises(transaction.TransactionManagementError, match="on_commit"):
            Order.objects.create(status="manual")
    finally:
        transaction.rollback()
        transaction.set_autocommit(True)


def test_a_subject_with_a_line_break_is_refused(bus, monkeypatch):
    monkeypatch.setattr(Order, "get_absolute_url", lambda self: "/orders/1/\r\nX-Evil: 1")
    with pytest.raises(InvalidEvent, match="'subject' contains CR, LF or NUL"):
        Order.objects.create(status="evil")


def test_a_primary_key_too_long_for_a_topic_is_refused_with_the_length(bus):
    with pytest.raises(InvalidEvent, match="270 bytes long; the limit is 255"):
        Tenant.objects.create(slug="k" * 250, name="Long")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"get_absolute_url": lambda self: ""}, "'subject' must be a non-empty string"),
        ({"get_absolute_url": lambda self: "/orders/1\x00"}, "'subject' contains CR, LF or NUL"),
    ],
)
def test_a_bad_subject_from_the_model_is_refused(bus, monkeypatch, change, message):
    for name, value in change.items():
        monkeypatch.setattr(Order, name, value)
    with pytest.raises(InvalidEvent, match=re.escape(message)):
        Order.objects.create(status="evil")


def test_a_source_with_a_line_break_is_refused_and_nothing_goes_out(bus, settings):
    settings.SIGNALBUS = {**settings.SIGNALBUS, "SOURCE": "//web-1\r\nX-Evil: 1"}
    with stream(bus, "shop.order.#") as reader:
        with pytest.raises(ConfigurationError, match=r"SIGNALBUS\['SOURCE'\] must be"):
            Order.objects.create(status="evil")
        with pytest.raises(ConfigurationError, match=r"SIGNALBUS\['SOURCE'\] must be"):
            signalbus.publish("public.note.1.made")
        reader.assert_quiet(0.5)


def test_a_model_event_is_the_event_that_event_create_makes(bus, settings):
    settings.SIGNALBUS = {**settings.SIGNALBUS, "SOURCE": "//web-1.example"}
    order = Order.objects.create(status="paid", total=Decimal("12.50"))
    binding = _resolve_fields(Order, ["id", "status", "total"])
    topic, event_id, body = binding.message(order, "updated", get_settings())
    made = Event.decode(body)
    expected = Event.create(
        f"shop.order.{order.pk}.updated",
        binding.data(order),
        type="shop.order.updated",
        subject=f"/orders/{order.pk}/",
        source="//web-1.example",
    )
    assert (topic, event_id) == (made.topic, made.id)
    assert made.id < expected.id  # a fresh id, in creation order
    assert made == replace(Event.decode(expected.encode()), id=made.id, time=made.time)


def test_text_primary_key_becomes_one_percent_encoded_word(bus):
    with stream(bus, "shop.tenant.#") as reader:
        Tenant.objects.create(slug="acme.corp", name="Acme")
        Tenant.objects.create(slug="50%", name="Half")
        first, second = reader.data(2)
    assert first["topic"] == "shop.tenant.acme%2Ecorp.created"
    assert first["subject"] == "/shop/tenant/acme%2Ecorp"
    assert second["topic"] == "shop.tenant.50%25.created"
    assert first["data"] == {"slug": "acme.corp", "name": "Acme"}


def test_unbound_model_publishes_nothing(bus):
    with stream(bus, "shop.#", "public.#") as reader:
        Note.objects.create(text="private")
        signalbus.publish("public.marker")
        (first,) = reader.data(1)
    assert first["topic"] == "public.marker"


def test_custom_publish_sets_type_and_subject(bus):
    with stream(bus, "public.#") as reader:
        default = signalbus.publish("public.invoice.7.paid", {"amount": Decimal("12.50")})
        typed = signalbus.publish(
            "public.invoice.7.paid", None, type="billing.paid", subject="/invoices/7/"
        )
        first, second = reader.data(2)
    assert (first["id"], first["type"], first["data"]) == (
        default.id,
        "public.invoice.7.paid",
        {"amount": "12.50"},
    )
    assert (second["id"], second["type"], second["subject"]) == (
        typed.id,
        "billing.paid",
        "/invoices/7/",
    )
    assert "data" not in second


def test_bad_topic_fails_at_publish_not_later(bus):
    with pytest.raises(InvalidTopic, match="word 2"):
        signalbus.publish("public..x", {})


def test_bind_signal_formats_the_topic_with_one_word_per_value(bus):
    shipped = Signal()
    bind_signal(
        shipped,
        "public.order.{order.pk}.shipped",
        data=lambda order, **kw: {"status": order.status},
        type="shop.shipped",
    )
    order = Order(pk=41, status="gone")
    with stream(bus, "public.order.#") as reader:
        shipped.send(sender=Order, order=order)
        (event,) = reader.data(1)
    assert (event["topic"], event["type"], event["data"]) == (
        "public.order.41.shipped",
        "shop.shipped",
        {"status": "gone"},
    )
    tenant_signal = Signal()
    bind_signal(tenant_signal, "public.tenant.{slug}")
    with stream(bus, "public.tenant.*") as reader:
        tenant_signal.send(sender=None, slug="a.b")
        (event,) = reader.data(1)
    assert event["topic"] == "public.tenant.a%2Eb"


def test_binding_an_unknown_field_is_a_configuration_error():
    with pytest.raises(
        ConfigurationError, match=r"shop.Note has no field 'titel'; its fields: id, text"
    ):
        bind_model(Note, ["titel"])
    with pytest.raises(ConfigurationError, match="non-empty list"):
        bind_model(Note, "text")
    unbind_model(Note)


@isolate_apps("tests.project.shop")
def test_a_model_whose_name_is_no_topic_word_is_a_configuration_error():
    class Café(models.Model):  # a Python identifier, not a topic word
        name = models.CharField(max_length=10)

        class Meta:
            app_label = "shop"

    with pytest.raises(ConfigurationError, match=r"shop.Café cannot start a topic: .*'café'"):
        bind_model(Café, ["name"])
    assert not post_save.has_listeners(Café)


def test_unknown_model_in_settings_is_a_configuration_error():
    from bridges.django_signals import bind_models_from_settings

    with pytest.raises(ConfigurationError, match=r"SIGNALBUS\['MODELS'\]\['shop.Nope'\]"):
        bind_models_from_settings({"shop.Nope": {"fields": ["id"]}})


class FailingBroker(Broker):
    scheme = "failing"

    def publish(self, topic: str, body: bytes) -> None:
        raise PublishError("the broker said no")

    def consumer(self, patterns) -> Consumer:
        raise NotImplementedError


def test_publish_failure_after_commit_is_logged_with_id_and_topic(caplog):
    previous = set_broker(FailingBroker("failing://"))
    try:
        with caplog.at_level(logging.ERROR, logger="signalbus.publish"):
            order = Order.objects.create(status="x")  # the save itself succeeds
    finally:
        set_broker(previous)
    assert Order.objects.filter(pk=order.pk).exists()
    (record,) = caplog.records
    assert f"shop.order.{order.pk}.created" in record.getMessage()
    assert "the broker said no" in record.getMessage()
    assert record.getMessage().split()[1] != ""  # the event id


SHORT_LIVED = """
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from tests.project.shop.models import Order
order = Order.objects.create(status="from-a-script")
print(order.pk)
"""


def test_a_short_lived_process_still_delivers_its_event(shared_worker, tmp_path):
    env = child_env(
        DJANGO_SETTINGS_MODULE="tests.project.settings",
        SIGNALBUS_BROKER_URL=shared_worker.broker_url,
        SIGNALBUS_TEST_DB=str(tmp_path / "db.sqlite3"),
    )
    with stream(shared_worker, "shop.order.*.created") as reader:
        done = subprocess.run(
            [sys.executable, "-c", SHORT_LIVED],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        (event,) = reader.data(1)
    assert event["data"]["status"] == "from-a-script"
    assert str(event["data"]["id"]) == done.stdout.strip()
    assert json.loads(json.dumps(event))["type"] == "shop.order.created"


class ThreadRecordingBroker(Broker):
    """Our protocol boundary: records where publish runs, then hands over to 0MQ."""

    scheme = "recording"

    def __init__(self, inner: Broker) -> None:
        super().__init__(inner.url)
        self.inner = inner
        self.threads: list[int] = []

    def publish(self, topic: str, body: bytes) -> None:
        self.threads.append(threading.get_ident())
        self.inner.publish(topic, body)

    def consumer(self, patterns) -> Consumer:
        raise NotImplementedError


@pytest.mark.anyio
async def test_apublish_from_async_code_publishes_off_the_event_loop(bus):
    import anyio

    from bridges.django_signals import get_broker

    recording = ThreadRecordingBroker(get_broker())
    previous = set_broker(recording)
    try:
        with stream(bus, "public.#") as reader:
            event = await signalbus.apublish("public.async.1", {"n": 1})
            got = await anyio.to_thread.run_sync(reader.get)
    finally:
        set_broker(previous)
    assert got.id == event.id
    assert recording.threads
    assert threading.get_ident() not in recording.threads


# -- event size ---------------------------------------------------------------------------------


@pytest.fixture
def small_messages(settings):
    settings.SIGNALBUS = {**settings.SIGNALBUS, "MAX_MESSAGE_BYTES": 1000}


def test_an_oversized_model_event_goes_out_without_data_and_says_so(bus, small_messages, caplog):
    with stream(bus, "shop.order.#") as reader:
        big = Order.objects.create(status="x" * 2000)
        Order.objects.create(status="paid")
        first, second = reader.data(2)
    assert first["topic"] == f"shop.order.{big.pk}.created"
    assert first["subject"] == f"/orders/{big.pk}/"
    assert first["dataomitted"] is True
    assert "data" not in first
    assert second["data"]["status"] == "paid"
    assert "dataomitted" not in second
    assert "over MAX_MESSAGE_BYTES (1000): sent without its data" in caplog.text


def test_an_oversized_custom_event_is_an_error_at_publish_and_nothing_goes_out(
    bus, small_messages
):
    with stream(bus, "public.#") as reader:
        with pytest.raises(InvalidEvent) as info:
            signalbus.publish("public.big", "x" * 2000)
        signalbus.publish("public.small", "ok")
        (event,) = reader.data(1)
    assert event["topic"] == "public.small"
    assert str(info.value).startswith("event on public.big is ")
    assert str(info.value).endswith(
        "bytes encoded, over MAX_MESSAGE_BYTES (1000); publish a reference to the data"
        " (an id, a URL) instead"
    )
