from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.utils import timezone

from accounts.choices import Capability, Role


class User(AbstractUser):
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.VIEWER)
    # Not a field: set on the request's user by the token authentication ("api:<token>") and
    # the web middleware ("web"), read by core.services.audit_record.
    audit_via: str

    def __str__(self) -> str:
        return self.username


class ApiToken(models.Model):
    """A named API token. Only a SHA-256 digest of the secret is stored; the key is shown once.

    SHA-256 (not a slow password hash) is enough: keys carry 256 bits of randomness, so
    there is nothing to brute-force, and every API request verifies one.
    """

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12, unique=True)
    digest = models.CharField(max_length=64)
    # Empty: every capability of the user's role. Otherwise the token is limited to these.
    scopes = ArrayField(
        models.CharField(max_length=32, choices=Capability.choices), default=list, blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "name"],
                condition=models.Q(revoked_at__isnull=True),
                name="accounts_token_unique_active_name_per_user",
            )
        ]

    def __str__(self) -> str:
        return f"{self.user} / {self.name}"

    @property
    def is_active(self) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > timezone.now()
