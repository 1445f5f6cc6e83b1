"""Server-rendered pages. Registry pages live here; deployment, dashboard and batch pages in
frontend/operations_urls.py, appended so every page shares the ``frontend`` namespace."""

from __future__ import annotations

from django.urls import path

from frontend.operations_urls import urlpatterns as operations_urlpatterns
from frontend.views import home

app_name = "frontend"

urlpatterns = [
    path("", home.home, name="home"),
    *operations_urlpatterns,
]
