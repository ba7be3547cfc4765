from django.db import models


class Tick(models.Model):
    """One benchmark event: ``SIGNALBUS["MODELS"]`` binds its payload."""

    payload = models.TextField()
