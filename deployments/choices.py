from django.db import models

from registry.choices import VersionState


class Environment(models.TextChoices):
    STAGING = "staging"
    PRODUCTION = "production"


class SlotColor(models.TextChoices):
    BLUE = "blue"
    GREEN = "green"


class SlotState(models.TextChoices):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"


class BuildState(models.TextChoices):
    PENDING = "pending"
    BUILDING = "building"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class RolloutKind(models.TextChoices):
    ROLLOUT = "rollout"
    ROLLBACK = "rollback"


class RolloutState(models.TextChoices):
    PENDING = "pending"
    BUILDING = "building"
    STARTING = "starting"
    VERIFYING = "verifying"
    SWITCHING = "switching"
    BAKING = "baking"
    LIVE = "live"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    SUPERSEDED = "superseded"


ACTIVE_ROLLOUT_STATES = (
    RolloutState.PENDING,
    RolloutState.BUILDING,
    RolloutState.STARTING,
    RolloutState.VERIFYING,
    RolloutState.SWITCHING,
)

# The version states each environment may serve: production only what a reviewer approved.
DEPLOYABLE_STATES: dict[str, set[str]] = {
    Environment.PRODUCTION: {VersionState.APPROVED},
    Environment.STAGING: {VersionState.VALIDATED, VersionState.IN_REVIEW, VersionState.APPROVED},
}
