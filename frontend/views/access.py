"""Page permissions: the same capabilities the API checks (accounts.permissions)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse

from accounts.permissions import user_has_capability
from core.errors import NotFound

if TYPE_CHECKING:
    from django_htmx.middleware import HtmxDetails

    from accounts.models import User


class PageRequest(HttpRequest):
    """The request a signed-in page sees; for annotating views only (never instantiated).

    Every page view is behind ``login_required`` or ``capability_required``, which send an
    anonymous visitor to the login page first, so ``user`` is a ``User``; django-htmx's
    middleware sets ``htmx`` on every request (the typed request its docs recommend).
    """

    user: User
    htmx: HtmxDetails


def capability_require(request: PageRequest, capability: str, *, what: str = "page") -> None:
    """403 naming the role and the missing capability, unless the user holds it."""
    if not user_has_capability(request.user, capability):
        raise PermissionDenied(
            f"Your role '{request.user.role}' does not allow this {what} "
            f"(needs the '{capability}' capability)."
        )


def capability_required(capability: str) -> Callable:
    """Signed in (else redirect to the login page) and holding ``capability`` (else 403)."""

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapped(request: PageRequest, *args, **kwargs) -> HttpResponse:
            capability_require(request, capability)
            try:
                return view(request, *args, **kwargs)
            except NotFound as exc:  # selectors raise the domain error; pages answer 404
                raise Http404(exc.message) from exc

        return login_required(wrapped)

    return decorator
