from django.urls import include, path

from .views import bus_page

urlpatterns = [
    path("signalbus/", include("signalbus.urls")),
    path("bus-page/", bus_page),
]
