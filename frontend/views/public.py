"""Pages anyone may open: the API docs (which lead a signed-out visitor to sign in) and the icon.

drf-spectacular's view refuses anonymous readers with the API's JSON 401; a person who
opened /api/docs/ in a browser gets a page (still 401) that links to the login page and
comes back here afterwards.
"""

from __future__ import annotations

from django.contrib.auth import REDIRECT_FIELD_NAME
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.templatetags.static import static
from django.views.decorators.http import require_safe
from drf_spectacular.views import SpectacularSwaggerSplitView
from rest_framework.exceptions import NotAuthenticated


class ApiDocsView(SpectacularSwaggerSplitView):
    # DRF's finalize_response takes any HttpResponseBase; its stubs say Response.
    def handle_exception(self, exc: Exception) -> HttpResponse:  # type: ignore[override]
        # The ?script= request is the page's own JavaScript: it keeps the API's answer.
        if isinstance(exc, NotAuthenticated) and "script" not in self.request.GET:
            return render(
                self.request._request,
                "frontend/accounts/docs_sign_in.html",
                {"next_field": REDIRECT_FIELD_NAME, "next": self.request.get_full_path()},
                status=401,
            )
        return super().handle_exception(exc)


@require_safe
def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico by themselves: send them to the shipped static icon.

    Resolved per request (the manifest's hashed name is not known at URL-conf import) and
    not permanent, so a cached redirect cannot outlive the hashed name.
    """
    return HttpResponseRedirect(static("frontend/favicon.ico"))
