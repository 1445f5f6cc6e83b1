from __future__ import annotations

from rest_framework import authentication, exceptions

from accounts.services import token_authenticate
from core.errors import NotAllowed


class ApiTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Token <key>`; request.auth is the ApiToken (its scopes limit the role)."""

    keyword = "Token"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(
                "Invalid Authorization header: expected 'Token <key>'."
            )
        try:
            token = token_authenticate(key=header[1].decode("ascii", errors="replace"))
        except NotAllowed as exc:
            raise exceptions.AuthenticationFailed(exc.message) from exc
        user = token.user
        user.audit_via = f"api:{token.name}"[:32]
        return user, token

    def authenticate_header(self, request) -> str:
        return self.keyword
