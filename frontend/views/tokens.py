"""API tokens: create (the key is shown once), list, revoke."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from accounts import selectors as account_selectors
from accounts import services as account_services
from core.choices import Capability as C
from core.errors import DomainError
from frontend.forms import TokenForm
from frontend.views.access import PageRequest, capability_required


@never_cache  # the page that shows a new key must not be kept by any cache
@capability_required(C.MANAGE_TOKENS)
def token_list(request: PageRequest) -> HttpResponse:
    form = TokenForm(request.POST or None, user=request.user)
    issued = None
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                issued = account_services.token_create(
                    user=request.user,
                    name=form.cleaned_data["name"],
                    scopes=form.cleaned_data["scopes"],
                    expires_at=form.expires_at(),
                )
            except DomainError as exc:
                field = "expires_on" if "expires" in exc.message else "name"
                form.add_error(field, exc.message)
            else:
                form = TokenForm(user=request.user)
        if issued is None:
            status = 400
    tokens = account_selectors.token_list(user=request.user).filter(user=request.user)
    return render(
        request,
        "frontend/accounts/tokens.html",
        {"form": form, "issued": issued, "tokens": tokens},
        status=status,
    )


@require_POST
@capability_required(C.MANAGE_TOKENS)
def token_revoke(request: PageRequest, token_id: int) -> HttpResponse:
    try:
        token = account_services.token_revoke(token_id=token_id, actor=request.user)
    except DomainError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Token {token.name!r} is revoked; clients using it now get 401.")
    return redirect("frontend:token_list")
