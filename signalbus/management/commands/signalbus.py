"""``manage.py signalbus ...``: the ``signalbus`` command with the project's settings."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand

from signalbus.cli import main


class Command(BaseCommand):  # type: ignore[misc]  # Django is untyped
    help = "signalbus worker | publish | tail | demo (see manage.py signalbus --help)"

    def run_from_argv(self, argv: list[str]) -> None:
        # Our own parser takes every option; Django's settings are already loaded.
        sys.exit(main(argv[2:], django_ready=True))

    def handle(self, *args: Any, **options: Any) -> None:  # pragma: no cover - run_from_argv
        raise SystemExit(main(list(args), django_ready=True))
