"""The ``signalbus`` command: ``worker``, ``publish``, ``tail``, ``demo``.

Also ``python -m signalbus`` and ``manage.py signalbus``. Errors a user can fix
are one line on stderr and a non-zero exit, never a traceback; a clean stop
(Ctrl-C, SIGTERM) exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

from .errors import ConfigurationError, InvalidTopic, SignalbusError

__all__ = ["build_parser", "main"]

EXIT_ERROR = 1
EXIT_USAGE = 2


def _common(parser: argparse.ArgumentParser, *, settings_required: bool) -> None:
    need = "required unless DJANGO_SETTINGS_MODULE is set" if settings_required else "optional"
    parser.add_argument(
        "--settings",
        metavar="MOD",
        help=f"Django settings module, e.g. mysite.settings ({need})",
    )
    parser.add_argument(
        "--broker",
        metavar="URL",
        help="broker URL (overrides $SIGNALBUS_BROKER_URL and SIGNALBUS['BROKER_URL']), "
        "e.g. zmq://127.0.0.1:5560 or amqp://guest:guest@127.0.0.1:5672/%%2F",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="how much to log on stderr (default: info)",
    )
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an unexpected error"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="signalbus",
        description="Django signals, carried to browsers and other processes in real time.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = commands.add_parser(
        "worker",
        help="consume the broker, serve the SSE endpoint, run the subscribers",
        description="Consume events from the broker and serve them at /events (SSE), "
        "with /healthz, /readyz and /metrics; run the @signalbus.subscriber functions "
        "(only those with --no-http).",
    )
    _common(worker, settings_required=True)
    worker.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    worker.add_argument("--port", type=int, default=8001, help="port to listen on (default: 8001)")
    worker.add_argument(
        "--topics",
        nargs="+",
        default=["#"],
        metavar="PATTERN",
        help="patterns this worker consumes from the broker (default: '#', everything)",
    )
    worker.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes sharing --host and --port, each with its own broker consumer, "
        "restarted if one dies; each serves its own /healthz, /readyz and /metrics "
        "(default: 1, this process alone)",
    )
    worker.add_argument(
        "--no-http",
        action="store_true",
        help="run the @signalbus.subscriber functions only: no SSE endpoint, no port bound "
        "(--host, --port and --topics do not apply)",
    )
    worker.set_defaults(run=_run_worker, settings_required=True)

    publish = commands.add_parser(
        "publish",
        help="publish one event",
        description="Publish one event on TOPIC, with JSON as its data.",
    )
    _common(publish, settings_required=False)
    publish.add_argument("topic", metavar="TOPIC", help="dotted topic, e.g. billing.invoice.7.paid")
    publish.add_argument(
        "data", metavar="JSON", nargs="?", help="the event's data as JSON (default: none)"
    )
    publish.add_argument("--type", help="the event's type (default: the topic)")
    publish.add_argument("--subject", help="the event's subject, e.g. /invoices/7/")
    publish.set_defaults(run=_run_publish, settings_required=False)

    tail = commands.add_parser(
        "tail",
        help="print events as they arrive",
        description="Print every event matching the patterns, one JSON line each, until Ctrl-C.",
    )
    _common(tail, settings_required=False)
    tail.add_argument("patterns", nargs="*", default=["#"], metavar="PATTERN", help="default: '#'")
    tail.set_defaults(run=_run_tail, settings_required=False)

    demo = commands.add_parser(
        "demo",
        help="run the example project and a worker on the embedded 0MQ broker",
        description="Migrate the example project (SQLite), start its web app and a worker on "
        "the embedded 0MQ broker, print the URL to open; Ctrl-C stops both.",
    )
    from . import demo as demo_module

    demo_module.add_arguments(demo)
    demo.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an unexpected error"
    )
    demo.set_defaults(run=demo_module.main, settings_required=None)
    return parser


def _setup_django(module: str | None, *, required: bool) -> None:
    """Configure Django from ``--settings`` or ``$DJANGO_SETTINGS_MODULE``, as manage.py does."""
    import django
    from django.conf import settings

    if settings.configured:
        return
    if module:
        os.environ["DJANGO_SETTINGS_MODULE"] = module
    module = os.environ.get("DJANGO_SETTINGS_MODULE")
    if not module:
        if required:
            raise ConfigurationError(
                "no settings module: pass --settings MOD or set DJANGO_SETTINGS_MODULE"
            )
        settings.configure(SIGNALBUS={})
    elif os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        django.setup()
    except ImportError as exc:
        raise ConfigurationError(f"cannot import settings module {module!r}: {exc}") from None


def _run_worker(args: argparse.Namespace) -> int:
    from .conf import broker_url, get_settings
    from .topics import validate_pattern
    from .worker import Worker

    settings = get_settings()
    patterns = [validate_pattern(p) for p in args.topics]
    if not 0 < args.port < 65536:
        raise ConfigurationError(f"--port {args.port} is not a TCP port")
    if args.workers < 1:
        raise ConfigurationError(f"--workers {args.workers}: give 1 or more worker processes")
    url = broker_url(args.broker, settings)
    worker = Worker(
        broker_url=url,
        settings=settings,
        host=args.host,
        port=args.port,
        patterns=patterns,
        http=not args.no_http,
    )
    if args.workers > 1:
        from .supervisor import supervise

        return supervise(worker, args.workers, log_level=args.log_level)
    return worker.run()


def _run_publish(args: argparse.Namespace) -> int:
    from brokers.registry import open_broker

    from .conf import broker_url, get_settings, mask_url
    from .events import Event
    from .topics import validate_topic

    try:
        data = json.loads(args.data) if args.data is not None else None
    except ValueError as exc:
        raise ConfigurationError(f"JSON argument is not valid JSON: {exc}") from None
    settings = get_settings()
    event = Event.create(
        validate_topic(args.topic),
        data,
        type=args.type,
        subject=args.subject,
        source=settings.source,
    )
    url = broker_url(args.broker, settings)
    broker = open_broker(url)
    try:
        broker.publish(event.topic, event.encode())
    finally:
        broker.close()
    if broker.dropped:
        print(
            f"signalbus: event {event.id} not delivered: no worker subscribed at {mask_url(url)}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    print(event.id)
    return 0


def _run_tail(args: argparse.Namespace) -> int:
    import asyncio

    from brokers.registry import open_broker

    from .conf import broker_url
    from .topics import validate_pattern

    patterns = [validate_pattern(p) for p in args.patterns]
    consumer = open_broker(broker_url(args.broker)).consumer(patterns)

    def show(topic: str, body: bytes) -> None:
        sys.stdout.write(body.decode("utf-8", "replace") + "\n")
        sys.stdout.flush()

    async def tail() -> None:
        await consumer.start()
        try:
            await consumer.run(show)
        finally:
            await consumer.aclose()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(tail())
    return 0


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None, *, django_ready: bool = False) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        if args.settings_required is not None:
            _configure_logging(args.log_level)
            if not django_ready:
                _setup_django(args.settings, required=args.settings_required)
        return run(args)
    except KeyboardInterrupt:
        return 0
    except (SignalbusError, InvalidTopic) as exc:
        print(f"signalbus: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:
        if getattr(args, "traceback", False):
            raise
        print(
            f"signalbus: unexpected {type(exc).__name__}: {exc} (--traceback shows where)",
            file=sys.stderr,
        )
        return EXIT_ERROR
