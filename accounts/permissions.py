"""The one place where roles become permissions.

Views declare which capability each action needs (``required_capabilities``); services
that guard a rule of their own (e.g. reviewing) ask ``user_has_capability`` too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from accounts.choices import Capability, Role

if TYPE_CHECKING:
    from accounts.models import User

C = Capability
ROLE_CAPABILITIES: dict[str, frozenset[str]] = {
    Role.VIEWER: frozenset({C.VIEW, C.MANAGE_TOKENS}),
    Role.DATA_SCIENTIST: frozenset(
        {
            C.VIEW,
            C.MANAGE_TOKENS,
            C.MANAGE_MODELS,
            C.UPLOAD,
            C.SUBMIT,
            C.SET_ALIAS,
            C.RUN_BATCH,
            C.LABEL,
        }
    ),
    Role.REVIEWER: frozenset({C.VIEW, C.MANAGE_TOKENS, C.REVIEW}),
    Role.OPERATOR: frozenset(
        {C.VIEW, C.MANAGE_TOKENS, C.SET_ALIAS, C.DEPLOY, C.RUN_BATCH, C.LABEL}
    ),
    Role.ADMIN: frozenset(Capability.values),
}


def user_capabilities(user: Any, token: Any = None) -> frozenset[str]:
    if user is None or not user.is_authenticated or not user.is_active:
        return frozenset()
    role = Role.ADMIN if user.is_superuser else user.role
    capabilities = ROLE_CAPABILITIES.get(role, frozenset())
    if token is not None and token.scopes:
        capabilities = capabilities & frozenset(token.scopes)
    return capabilities


def user_has_capability(user: Any, capability: str, token: Any = None) -> bool:
    return capability in user_capabilities(user, token)


class RolePermission(BasePermission):
    """Default permission: signed in, and holding the capability the view's action needs.

    A view lists ``required_capabilities = {"list": Capability.VIEW, ...}``; an action it
    does not list is refused, so a new endpoint is closed until someone opens it. A tuple
    of capabilities means any one of them (the service then checks which parts of the
    request each allows).
    """

    message = "You do not have permission to perform this action."

    def has_permission(self, request, view) -> bool:
        if not request.user or not request.user.is_authenticated:
            return False
        required = getattr(view, "required_capabilities", {})
        action = getattr(view, "action", None)
        if action is None and not hasattr(view, request.method.lower()):
            return True  # a method the view lacks: let it answer 405, not a misleading 403
        action = action or request.method.lower()
        capability = required.get(action)
        if capability is None:
            return False
        wanted = capability if isinstance(capability, tuple) else (capability,)
        token = request.auth if hasattr(request.auth, "scopes") else None
        held = user_capabilities(request.user, token)
        if not any(item in held for item in wanted):
            needs = " or ".join(f"'{item}'" for item in wanted)
            self.message = (
                f"Your role '{request.user.role}' does not allow this action "
                f"(needs the {needs} capability)."
            )
            return False
        return True


def request_actor(request: Request) -> User:
    """The caller of an API action. Every action requires a capability, which an anonymous
    user never has (RolePermission runs before the action), so it is a signed-in User."""
    return cast("User", request.user)
