"""The Django app: ``INSTALLED_APPS = [..., "signalbus"]`` connects the bindings at start-up."""

from __future__ import annotations

from django.apps import AppConfig


class SignalbusConfig(AppConfig):  # type: ignore[misc]  # Django is untyped
    name = "signalbus"
    verbose_name = "signalbus"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The composition root of a Django process: core settings, the signal bridge.
        from bridges.django_signals import bind_models_from_settings

        from .conf import get_settings

        bind_models_from_settings(get_settings().models)
