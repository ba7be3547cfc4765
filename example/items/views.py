"""The page, its forms (POST, then redirect to GET) and the JSON snapshot the page
reloads when the stream tells it to (a ``signalbus.reset`` event)."""

import hashlib
import json
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.cache import get_conditional_response
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from .forms import ItemForm
from .models import Item


def _see_other(pk: int | None = None) -> HttpResponseRedirect:
    """303: the browser follows with a GET, so a reload never re-posts the form."""
    url = reverse("items:index") + (f"#item-{pk}" if pk is not None else "")
    response = HttpResponseRedirect(url)
    response.status_code = 303
    return response


def _page(request: HttpRequest, form: ItemForm | None = None, status: int = 200) -> HttpResponse:
    context = {
        "items": Item.objects.all(),
        "form": form or ItemForm(),
        "events_url": settings.DEMO_EVENTS_URL,
    }
    return render(request, "items/index.html", context, status=status)


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    return _page(request)


@require_POST
def create(request: HttpRequest) -> HttpResponse:
    form = ItemForm(request.POST)
    if not form.is_valid():
        return _page(request, form, status=400)
    item = form.save()
    return _see_other(item.pk)


@require_http_methods(["GET", "HEAD", "POST"])
def item(request: HttpRequest, pk: int) -> HttpResponse:
    """GET shows the item in the list; POST renames it."""
    instance = get_object_or_404(Item, pk=pk)
    if request.method != "POST":
        return HttpResponseRedirect(reverse("items:index") + f"#item-{pk}")
    form = ItemForm(request.POST, instance=instance)
    if not form.is_valid():
        return _page(request, form, status=400)
    form.save()
    return _see_other(pk)


@require_POST
def toggle(request: HttpRequest, pk: int) -> HttpResponse:
    instance = get_object_or_404(Item, pk=pk)
    instance.done = not instance.done
    instance.save(update_fields=["done", "updated_at"])
    return _see_other(pk)


@require_POST
def delete(request: HttpRequest, pk: int) -> HttpResponse:
    get_object_or_404(Item, pk=pk).delete()
    return _see_other()


def _as_json(instance: Item) -> dict[str, Any]:
    # The same fields and forms as the events carry (datetime.isoformat keeps the
    # microseconds), plus the item's URL, which an event gives as its subject.
    return {
        "id": instance.pk,
        "title": instance.title,
        "done": instance.done,
        "updated_at": instance.updated_at.isoformat(),
        "url": instance.get_absolute_url(),
    }


@require_GET
def items_json(request: HttpRequest) -> HttpResponse:
    """Every item. The ETag is a digest of the body, so a page that reloads an unchanged
    list gets a 304; ``no-cache`` makes the browser ask each time instead of guessing."""
    body = json.dumps({"items": [_as_json(i) for i in Item.objects.all()]}, ensure_ascii=False)
    etag = '"' + hashlib.sha256(body.encode("utf-8")).hexdigest()[:32] + '"'
    response = HttpResponse(body, content_type="application/json")
    response["ETag"] = etag
    response["Cache-Control"] = "no-cache"
    return get_conditional_response(request, etag=etag, response=response)
