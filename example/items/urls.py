from django.urls import path

from . import views

app_name = "items"

urlpatterns = [
    path("", views.index, name="index"),
    path("items.json", views.items_json, name="items-json"),
    path("items/", views.create, name="create"),
    path("items/<int:pk>/", views.item, name="item"),
    path("items/<int:pk>/toggle/", views.toggle, name="toggle"),
    path("items/<int:pk>/delete/", views.delete, name="delete"),
]
