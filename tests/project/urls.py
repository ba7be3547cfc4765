from django.urls import include, path

urlpatterns = [path("signalbus/", include("signalbus.urls"))]
