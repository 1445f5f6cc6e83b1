"""Page permissions: the same capabilities the API checks (accounts.permissions)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse

from accounts.permissions import user_has_capability
from core.errors import NotFound


def capability_require(request: HttpRequest, capability: str, *, what: str = "page") -> None:
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
        def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            capability_require(request, capability)
            try:
                return view(request, *args, **kwargs)
            except NotFound as exc:  # selectors raise the domain error; pages answer 404
                raise Http404(exc.message) from exc

        return login_required(wrapped)

    return decorator
