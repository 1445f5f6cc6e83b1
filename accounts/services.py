from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.choices import Capability, Role
from accounts.models import ApiToken, User
from core.choices import AuditAction
from core.errors import Conflict, InvalidInput, NotAllowed, NotFound
from core.services import audit_record

TOKEN_PREFIX = "my_"  # noqa: S105 - a public marker, not a secret


def token_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    key: str  # shown once, never stored


@transaction.atomic
def user_create(
    *,
    username: str,
    role: str,
    password: str | None = None,
    email: str = "",
    actor: User | None = None,
) -> User:
    """Create a user with a role. Without a password the account can only use API tokens."""
    if role not in Role.values:
        raise InvalidInput(f"Unknown role {role!r}; choose one of {', '.join(Role.values)}.")
    if User.objects.filter(username__iexact=username).exists():
        raise Conflict(f"A user named {username!r} already exists.")
    user = User(
        username=username,
        email=email,
        role=role,
        is_staff=role == Role.ADMIN,
        is_superuser=role == Role.ADMIN,
    )
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.full_clean(exclude=["password"])
    user.save()
    audit_record(
        actor=actor,
        action=AuditAction.USER_CREATED,
        obj=user,
        after={"username": user.username, "role": role},
    )
    return user


@transaction.atomic
def token_create(
    *,
    user: User,
    name: str,
    scopes: list[str] | None = None,
    expires_at: datetime | None = None,
    actor: User | None = None,
) -> IssuedToken:
    """Issue a token; the returned key is the only time the secret exists outside the client."""
    name = name.strip()
    if not name:
        raise InvalidInput("A token needs a name.")
    scopes = sorted(set(scopes or []))
    unknown = [scope for scope in scopes if scope not in Capability.values]
    if unknown:
        raise InvalidInput(f"Unknown token scope(s): {', '.join(unknown)}.")
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidInput("expires_at must be in the future.")
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    try:
        with transaction.atomic():
            token = ApiToken.objects.create(
                user=user,
                name=name,
                prefix=prefix,
                digest=token_digest(secret),
                scopes=scopes,
                expires_at=expires_at,
            )
    except IntegrityError as exc:
        raise Conflict(f"You already have an active token named {name!r}.") from exc
    audit_record(
        actor=actor or user,
        action=AuditAction.TOKEN_CREATED,
        obj=token,
        after={
            "name": name,
            "user": user.username,
            "scopes": scopes,
            "expires_at": expires_at.isoformat() if expires_at else None,
        },
    )
    return IssuedToken(token=token, key=f"{TOKEN_PREFIX}{prefix}.{secret}")


@transaction.atomic
def token_revoke(*, token_id: int, actor: User) -> ApiToken:
    """Revoke a token (own tokens, or any token for an admin). Revoking twice is harmless."""
    token = ApiToken.objects.select_for_update().select_related("user").filter(pk=token_id).first()
    if token is None or (token.user_id != actor.pk and not actor.is_superuser):
        raise NotFound(f"No token with id {token_id}.")
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_record(
            actor=actor,
            action=AuditAction.TOKEN_REVOKED,
            obj=token,
            after={"name": token.name, "user": token.user.username},
        )
    return token


def token_authenticate(*, key: str) -> ApiToken:
    """Resolve a presented key to its active token (raising NotAllowed with the reason)."""
    if not key.startswith(TOKEN_PREFIX) or "." not in key:
        raise NotAllowed("Malformed API token.")
    prefix, _, secret = key[len(TOKEN_PREFIX) :].partition(".")
    token = ApiToken.objects.select_related("user").filter(prefix=prefix).first()
    # compare_digest even on a miss keeps the timing independent of which part was wrong.
    expected = token.digest if token else "0" * 64
    if not hmac.compare_digest(expected, token_digest(secret)) or token is None:
        raise NotAllowed("Invalid API token.")
    if token.revoked_at is not None:
        raise NotAllowed("This API token has been revoked.")
    if token.expires_at is not None and token.expires_at <= timezone.now():
        raise NotAllowed("This API token has expired.")
    if not token.user.is_active:
        raise NotAllowed("The user of this API token is inactive.")
    now = timezone.now()
    # Touch last_used at most once a minute: an UPDATE on every request would serialise
    # concurrent requests of one CI pipeline on the token row.
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token
