"""Deployment, dashboard and batch pages (appended to frontend/urls.py under ``frontend``)."""

from __future__ import annotations

from django.urls import path

from frontend.views import operations

urlpatterns = [
    path("deployments/", operations.deployment_list, name="deployment_list"),
    path("batch/", operations.batch_list, name="batch_list"),
]
