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


class RolloutStrategy(models.TextChoices):
    # The new version takes all traffic at once, the old slot kept warm while baking.
    BLUE_GREEN = "blue_green"
    # The new version takes a growing share in steps, judged against the live one at each.
    CANARY = "canary"
    # The new version gets a copy of live requests; its answers are compared, never returned.
    SHADOW = "shadow"


class RolloutState(models.TextChoices):
    PENDING = "pending"
    BUILDING = "building"
    STARTING = "starting"
    VERIFYING = "verifying"
    CANARY = "canary"  # a share of traffic on the new version, judged step by step
    SHADOW = "shadow"  # live requests mirrored to the new version, answers compared
    SWITCHING = "switching"
    BAKING = "baking"
    LIVE = "live"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"  # a canary or shadow ended (judge or person); the live version kept
    SUPERSEDED = "superseded"


ACTIVE_ROLLOUT_STATES = (
    RolloutState.PENDING,
    RolloutState.BUILDING,
    RolloutState.STARTING,
    RolloutState.VERIFYING,
    RolloutState.CANARY,
    RolloutState.SHADOW,
    RolloutState.SWITCHING,
)

# The version states each environment may serve: production only what a reviewer approved.
DEPLOYABLE_STATES: dict[str, set[str]] = {
    Environment.PRODUCTION: {VersionState.APPROVED},
    Environment.STAGING: {VersionState.VALIDATED, VersionState.IN_REVIEW, VersionState.APPROVED},
}
