from __future__ import annotations


class AuditViaMiddleware:
    """Mark session-authenticated users as acting "web" for the audit log.

    API token authentication (later, in DRF) overrides it with "api:<token name>"; code
    that runs outside a request (shell, seed, tasks) leaves it unset.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            user.audit_via = "web"
        return self.get_response(request)
