"""``path("signalbus/", include("signalbus.urls"))``: the browser helpers' views."""

from django.urls import path

from .views import token_view

app_name = "signalbus"
urlpatterns = [path("token/", token_view, name="token")]
