from django.db import models

from core.choices import Capability

__all__ = ["Capability", "Role"]


class Role(models.TextChoices):
    VIEWER = "viewer"
    DATA_SCIENTIST = "data_scientist"
    REVIEWER = "reviewer"
    OPERATOR = "operator"
    ADMIN = "admin"
