"""Reference prediction distributions built as soon as a version serves."""

from __future__ import annotations

from deployments.choices import SlotState
from deployments.models import Slot
from monitoring.models import DriftProfile
from monitoring.services.drift_profiles import drift_prediction_profile_ensure, drift_profile_ensure
from registry.models import ModelVersion


def prediction_baselines_ensure() -> list[int]:
    """Build the reference prediction distribution of every version a ready slot serves and
    that has none yet; the ids of the versions that got one.

    The dashboard's "Predictions vs reference" needs that baseline, and the drift service
    builds it otherwise only while computing a scheduled drift window, i.e. after the first
    full window (an hour by default) that closes with the version serving: the chart stayed
    empty ~35 minutes on average. Asked every minute instead, a version that starts serving
    has its baseline within a minute or two. The drift services build it (asked of the
    serving slot, never by loading the model here); a version that has one is not asked again.
    """
    done = DriftProfile.objects.filter(prediction__isnull=False).values("version_id")
    serving = (
        Slot.objects.filter(state=SlotState.READY, version__isnull=False)
        .exclude(url="")
        .values("version_id")
    )
    built: list[int] = []
    for version in (
        ModelVersion.objects.filter(pk__in=serving).exclude(reference_path="").exclude(pk__in=done)
    ):
        profile = drift_profile_ensure(version=version)
        if profile is not None and drift_prediction_profile_ensure(
            profile=profile, version=version
        ):
            built.append(version.pk)
    return built
