"""Placeholder views, replaced by the operations pages."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


@login_required
def deployment_list(request: HttpRequest) -> HttpResponse:
    return render(request, "frontend/home.html")


@login_required
def batch_list(request: HttpRequest) -> HttpResponse:
    return render(request, "frontend/home.html")
