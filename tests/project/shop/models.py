from django.db import models


class Order(models.Model):
    """Bound with id, status, total and placed_at; ``secret`` must never leave the process."""

    status = models.CharField(max_length=20, default="new")
    total = models.DecimalField(max_digits=12, decimal_places=4, default=0)
    placed_at = models.DateTimeField(null=True)
    secret = models.CharField(max_length=50, default="")

    def get_absolute_url(self) -> str:
        return f"/orders/{self.pk}/"


class Tenant(models.Model):
    """A text primary key: its topic word is percent-encoded."""

    slug = models.CharField(primary_key=True, max_length=50)
    name = models.CharField(max_length=50)


class Note(models.Model):
    """Not bound: it never publishes."""

    text = models.TextField()
