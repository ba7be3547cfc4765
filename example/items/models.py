from django.db import models
from django.urls import reverse


class Item(models.Model):
    """One thing to do. Its saves and deletes reach every open page through signalbus,
    which publishes the fields bound in ``SIGNALBUS["MODELS"]`` (settings.py)."""

    title = models.CharField(max_length=200)
    done = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]  # newest first, as the page inserts live arrivals at the top

    def __str__(self) -> str:
        return self.title

    def get_absolute_url(self) -> str:
        # The event's ``subject`` (DESIGN.md, "Events"); the page posts edits here.
        return reverse("items:item", args=[self.pk])
