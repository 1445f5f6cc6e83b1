from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import render

from frontend.views.access import PageRequest
from registry import selectors


@login_required
def home(request: PageRequest) -> HttpResponse:
    """Where to start: what is waiting, and the next step for a new user."""
    return render(
        request,
        "frontend/home.html",
        {
            "model_count": selectors.model_list_by_name().count(),
            "review_count": selectors.review_queue().count(),
        },
    )
