"""Django signals -> bus: model saves and deletes, custom signals and `publish`.

Every event is encoded when the signal fires (the values as saved) and sent
when the surrounding transaction commits (``transaction.on_commit``), so a
rolled-back save publishes nothing, and nested atomic blocks behave exactly
as Django's own ``on_commit`` does. Consecutive events of one transaction
share one ``on_commit`` entry (`_CommitBatch`): a bulk of saves costs one
entry, not one each (except in a ``TestCase``, whose tests count entries).
Only the fields bound for a model go out: nothing is published unless the
project said so.

Size: an event is at most ``MAX_MESSAGE_BYTES`` encoded, the size a worker takes.
A custom event over it is the caller's error, raised by `publish`; a model event
over it (a large text field) still goes out, without ``data`` and with the
extension ``dataomitted: true``, so its subscribers know to refetch the subject.
"""

from __future__ import annotations

import logging
import string
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.core.exceptions import FieldDoesNotExist
from django.db import DEFAULT_DB_ALIAS, connections, models
from django.db.models.signals import post_delete, post_save
from django.dispatch import Signal

from brokers.base import Broker
from brokers.registry import open_broker
from signalbus import codec
from signalbus.conf import Settings, broker_url, get_settings
from signalbus.errors import ConfigurationError, InvalidEvent, InvalidTopic, SignalbusError
from signalbus.events import Event, check_text, default_source, envelope, new_stamp
from signalbus.topics import MAX_TOPIC_BYTES, pk_word, validate_topic

__all__ = [
    "apublish",
    "bind_model",
    "bind_models_from_settings",
    "bind_signal",
    "get_broker",
    "publish",
    "set_broker",
]

logger = logging.getLogger("signalbus.publish")


class _ProcessBroker:
    """The one broker handle of this process, opened on first publish.

    Django under ASGI runs each sync view in a thread of its own request
    context, so a per-thread connection would be rebuilt per request
    (DESIGN.md, "Pitfalls"): one per process, thread-safe, is the rule.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._broker: Broker | None = None
        self.failed = 0

    def get(self) -> Broker:
        with self._lock:
            if self._broker is None:
                self._broker = open_broker(broker_url())
            return self._broker

    def set(self, broker: Broker | None) -> Broker | None:
        with self._lock:
            old, self._broker = self._broker, broker
            return old


_process = _ProcessBroker()


def get_broker() -> Broker:
    """The broker this process publishes to (from the settings, opened once)."""
    return _process.get()


def set_broker(broker: Broker | None) -> Broker | None:
    """Replace this process's broker (tests, embedding); returns the previous one."""
    return _process.set(broker)


def _send(topic: str, event_id: str, body: bytes) -> None:
    """Runs after commit: a failure is logged with the event's id and counted, never raised
    into a request whose data is already committed."""
    try:
        # submit: the events a commit releases share broker round trips (AMQP confirms).
        get_broker().submit(topic, body)
    except SignalbusError as exc:
        _process.failed += 1
        logger.error("event %s on %s not published: %s", event_id, topic, exc)


class _CommitBatch:
    """Consecutive events of one transaction at one savepoint, sent in order on commit.

    Appending to the last ``on_commit`` entry when it is a batch registered at the same
    savepoints is what Django would do with one entry per event: a savepoint rollback
    discards them together, and they run at the same point of the commit. Django pops
    its entries from the front of a list, so a bulk of 10,000 saves with an entry each
    spent more in that list than in sending. ``savepoints`` is None for a batch that
    takes no more events."""

    __slots__ = ("items", "savepoints")

    def __init__(self, savepoints: list[str | None] | None) -> None:
        self.savepoints = savepoints
        self.items: list[tuple[str, str, bytes]] = []

    def __call__(self) -> None:
        for topic, event_id, body in self.items:
            _send(topic, event_id, body)


def _on_commit(topic: str, event_id: str, body: bytes, using: str | None) -> None:
    connection = connections[DEFAULT_DB_ALIAS if using is None else using]
    hooks = connection.run_on_commit
    if hooks and connection.in_atomic_block:
        last = hooks[-1][1]
        if type(last) is _CommitBatch and last.savepoints == connection.savepoint_ids:
            last.items.append((topic, event_id, body))
            return
    # A TestCase's transaction never commits: captureOnCommitCallbacks takes the entries
    # added during its block and leaves them in the list, so there each event keeps its own.
    # That is decided once per batch: entering or leaving a block changes savepoint_ids, so a
    # batch only ever takes events under the blocks it was made under.
    testcase = any(block._from_testcase for block in connection.atomic_blocks)
    batch = _CommitBatch(None if testcase else list(connection.savepoint_ids))
    batch.items.append((topic, event_id, body))
    # Outside a transaction Django runs it now, and refuses it in manual transaction mode.
    connection.on_commit(batch)


def publish(
    topic: str,
    data: Any = None,
    *,
    type: str | None = None,
    subject: str | None = None,
    using: str | None = None,
) -> Event:
    """Publish a custom event once the current transaction on ``using`` commits."""
    validate_topic(topic)
    settings = get_settings()
    event = Event.create(topic, data, type=type, subject=subject, source=settings.source)
    body, limit = event.encode(), settings.max_message_bytes  # encoded now: the values as given
    if len(body) > limit:
        raise InvalidEvent(
            f"event on {topic} is {len(body)} bytes encoded, over MAX_MESSAGE_BYTES"
            f" ({limit}); publish a reference to the data (an id, a URL) instead"
        )
    _on_commit(topic, event.id, body, using)
    return event


async def apublish(
    topic: str,
    data: Any = None,
    *,
    type: str | None = None,
    subject: str | None = None,
    using: str | None = None,
) -> Event:
    """`publish` for async code: the transaction and the broker's confirm are waited for in
    Django's sync thread, never on the event loop."""
    from asgiref.sync import sync_to_async

    return await sync_to_async(publish)(topic, data, type=type, subject=subject, using=using)


# -- models -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelBinding:
    """Which fields of a model go out in its events."""

    model: type[models.Model]
    fields: tuple[tuple[str, models.Field[Any, Any]], ...]
    label: str  # "app_label.model_name", checked to be two topic words
    subject_prefix: str  # "/app_label/model_name/": the subject without get_absolute_url

    def data(self, instance: models.Model) -> dict[str, Any]:
        return {name: field.value_from_object(instance) for name, field in self.fields}

    def message(
        self, instance: models.Model, action: str, settings: Settings
    ) -> tuple[str, str, bytes]:
        """The topic, id and body of the event of ``action`` on ``instance``, encoded now
        (the values as saved). Its topic and type are words checked at bind time, so only
        what a save can still get wrong is checked: the topic's length (a long key) and a
        subject from ``get_absolute_url``. This skips `Event`, whose checks cost as much as
        the rest of a model event."""
        label, word = self.label, pk_word(instance.pk)  # one topic word, whatever the key holds
        topic = f"{label}.{word}.{action}"
        if len(topic) > MAX_TOPIC_BYTES:  # a long key: refused as any event's topic is
            try:
                validate_topic(topic)  # raises, naming the length
            except InvalidTopic as exc:
                raise InvalidEvent(f"event topic: {exc}") from None
        source = settings.source or default_source()  # checked with the settings
        subject = _subject(instance, self.subject_prefix, word)
        event_id, time = new_stamp()
        parts = (event_id, source, f"{label}.{action}", time, topic)
        body = codec.dumps(envelope(*parts, self.data(instance), subject))
        limit = settings.max_message_bytes
        if len(body) > limit:
            logger.warning(
                "event %s on %s is %d bytes, over MAX_MESSAGE_BYTES (%d): sent without its data",
                event_id,
                topic,
                len(body),
                limit,
            )
            body = codec.dumps(envelope(*parts, None, subject, {"dataomitted": True}))
        return topic, event_id, body


def _subject(instance: models.Model, prefix: str, word: str) -> str:
    get_url = getattr(instance, "get_absolute_url", None)
    if get_url is not None:
        try:
            url = str(get_url())
        except Exception:
            logger.warning(
                "%s.get_absolute_url() failed; the event's subject falls back to its pk",
                type(instance).__name__,
                exc_info=True,
            )
        else:
            return check_text("subject", url)
    return prefix + word  # words checked at bind time


def _resolve_fields(model: type[models.Model], names: Iterable[str]) -> ModelBinding:
    names = [] if isinstance(names, str) else list(names)
    if not names:
        raise ConfigurationError(
            f"{model._meta.label}: 'fields' must be a non-empty list of field names"
        )
    resolved = []
    for name in names:
        try:
            field = model._meta.get_field(name)
        except FieldDoesNotExist:
            known = ", ".join(f.name for f in model._meta.concrete_fields)
            raise ConfigurationError(
                f"{model._meta.label} has no field {name!r}; its fields: {known}"
            ) from None
        if not getattr(field, "concrete", False) or field.many_to_many:
            raise ConfigurationError(
                f"{model._meta.label}.{name} is not a concrete column; bind columns only"
            )
        resolved.append((name, field))
    app_label, model_name = model._meta.app_label, model._meta.model_name
    label = f"{app_label}.{model_name}"
    try:
        validate_topic(label)
    except InvalidTopic as exc:  # an identifier may hold letters a topic word may not
        raise ConfigurationError(f"{model._meta.label} cannot start a topic: {exc}") from None
    return ModelBinding(model, tuple(resolved), label, f"/{app_label}/{model_name}/")


def bind_model(model: type[models.Model], fields: Iterable[str]) -> ModelBinding:
    """Publish ``created``/``updated``/``deleted`` events of ``model`` with only ``fields``."""
    binding = _resolve_fields(model, fields)
    uid = f"signalbus:{model._meta.label}"

    def on_save(
        sender: Any,
        instance: models.Model,
        created: bool,
        raw: bool = False,
        using: str | None = None,
        **kwargs: Any,
    ) -> None:
        if raw:  # loaddata: fixtures are not application events
            return
        topic, event_id, body = binding.message(
            instance, "created" if created else "updated", get_settings()
        )
        _on_commit(topic, event_id, body, using)

    def on_delete(
        sender: Any, instance: models.Model, using: str | None = None, **kwargs: Any
    ) -> None:
        topic, event_id, body = binding.message(instance, "deleted", get_settings())
        _on_commit(topic, event_id, body, using)

    post_save.connect(on_save, sender=model, weak=False, dispatch_uid=uid)
    post_delete.connect(on_delete, sender=model, weak=False, dispatch_uid=uid)
    return binding


def unbind_model(model: type[models.Model]) -> None:
    uid = f"signalbus:{model._meta.label}"
    post_save.disconnect(sender=model, dispatch_uid=uid)
    post_delete.disconnect(sender=model, dispatch_uid=uid)


def bind_models_from_settings(table: Mapping[str, Mapping[str, Any]]) -> None:
    """``SIGNALBUS["MODELS"]``: ``{"app_label.Model": {"fields": [...]}}``."""
    for label, options in table.items():
        try:
            model = apps.get_model(label)
        except (LookupError, ValueError) as exc:
            raise ConfigurationError(f"SIGNALBUS['MODELS'][{label!r}]: {exc}") from None
        if not isinstance(options, Mapping) or "fields" not in options:
            raise ConfigurationError(f"SIGNALBUS['MODELS'][{label!r}] must be {{'fields': [...]}}")
        bind_model(model, options["fields"])


# -- custom signals -------------------------------------------------------------------------


class _TopicFormatter(string.Formatter):
    """``"shop.order.{order.pk}.shipped"``: each value becomes one topic word."""

    def format_field(self, value: Any, format_spec: str) -> str:
        return pk_word(super().format_field(value, format_spec))


def bind_signal(
    signal: Signal,
    topic: str,
    data: Callable[..., Any] | None = None,
    *,
    type: str | None = None,
    sender: Any = None,
) -> Callable[..., None]:
    """Publish an event each time ``signal`` is sent; ``topic`` is formatted with its
    keyword arguments, ``data(**kwargs)`` gives the event's data (none by default)."""
    formatter = _TopicFormatter()

    def receiver(sender: Any, **kwargs: Any) -> None:
        kwargs.pop("signal", None)
        resolved = formatter.format(topic, sender=sender, **kwargs)
        payload = data(sender=sender, **kwargs) if data is not None else None
        publish(resolved, payload, type=type)

    uid = f"signalbus:{id(signal)}:{topic}"
    signal.connect(receiver, sender=sender, weak=False, dispatch_uid=uid)
    return receiver
