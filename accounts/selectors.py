from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import ApiToken, User


def token_list(*, user: User) -> QuerySet[ApiToken]:
    tokens = ApiToken.objects.select_related("user")
    return tokens if user.is_superuser else tokens.filter(user=user)
