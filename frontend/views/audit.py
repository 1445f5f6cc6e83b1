"""The audit log as a filterable, paginated timeline."""

from __future__ import annotations

from datetime import datetime, time, timedelta

from django.core.paginator import Paginator
from django.db.models import Q
from django.http import HttpResponse
from django.shortcuts import render
from django.utils import timezone

from core.choices import Capability as C
from core.selectors import audit_event_list
from frontend.forms import AuditFilterForm
from frontend.views.access import PageRequest, capability_required

EVENTS_PER_PAGE = 50


def _day_start(day) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


@capability_required(C.VIEW)
def audit_log(request: PageRequest) -> HttpResponse:
    form = AuditFilterForm(request.GET or None)
    events = audit_event_list()
    if form.is_valid():
        data = form.cleaned_data
        if data["action"]:
            events = events.filter(action=data["action"])
        if data["actor"]:
            events = events.filter(actor_name__iexact=data["actor"].strip())
        if data["object"]:
            text = data["object"].strip()
            events = events.filter(
                Q(object_repr__icontains=text) | Q(object_type__iexact=text) | Q(object_id=text)
            )
        if data["since"]:
            events = events.filter(at__gte=_day_start(data["since"]))
        if data["until"]:  # inclusive: the whole "to" day
            events = events.filter(at__lt=_day_start(data["until"] + timedelta(days=1)))
    page = Paginator(events, EVENTS_PER_PAGE).get_page(request.GET.get("page"))
    return render(
        request,
        "frontend/audit/audit_log.html",
        {
            "form": form,
            "page": page,
            "filtered": form.is_valid() and any(form.cleaned_data.values()),
        },
        status=400 if form.is_bound and not form.is_valid() else 200,
    )
