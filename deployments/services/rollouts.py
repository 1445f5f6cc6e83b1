"""The blue-green rollout state machine.

A rollout moves through pending → building → starting → verifying → switching → baking →
live (or failed / rolled_back). Each step's work is idempotent (building reuses the Bento,
starting a slot that already serves the Bento is a no-op, publishing a route twice is
harmless), and each transition is a conditional UPDATE on the state it starts from, so a
redelivered task or the reconciliation sweep can run any step again without harm.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from core.choices import AuditAction
from core.errors import Conflict, InvalidInput, InvalidState, NotFound
from core.services import audit_record
from deployments import backends
from deployments.choices import (
    ACTIVE_ROLLOUT_STATES,
    DEPLOYABLE_STATES,
    BuildState,
    Environment,
    RolloutKind,
    RolloutState,
    RolloutStrategy,
    SlotColor,
    SlotState,
)
from deployments.follow import alias_version_number
from deployments.integrations import bentoml as bento
from deployments.models import Deployment, Rollout, Slot
from deployments.runtime.base import PRIORITY_LOW, PRIORITY_NORMAL, RuntimeBackendError
from deployments.services._steps import (
    end_baking,
    enqueue_advance,
    fail,
    log_step,
    other_color,
    pause_for_tests,
    slot_stop,
    switched_note,
    transition,
)
from deployments.services.artifacts import artifact_mismatch, artifact_mismatch_record
from deployments.services.bentos import build_bento_available
from deployments.services.builds import build_ensure
from deployments.services.leases import LeaseHeld, lease_kept, lease_take, worker_identity
from deployments.services.progressive import (
    plan_clean,
    progressive_enter,
    step_canary,
    step_shadow,
)
from deployments.services.routes import route_sync
from registry.models import ModelVersion

logger = logging.getLogger(__name__)


def _deployable(deployment: Deployment, version: ModelVersion) -> None:
    allowed = DEPLOYABLE_STATES[deployment.environment]
    if version.state not in allowed:
        need = (
            "approved"
            if deployment.environment == Environment.PRODUCTION
            else "validated, in review or approved"
        )
        raise InvalidState(
            f"{version} is {version.state}; a {deployment.environment} "
            f"deployment needs a version that is {need}.",
            code="version_not_deployable",
        )


@transaction.atomic
def rollout_start(
    *,
    deployment: Deployment,
    version_number: int | None = None,
    actor: User | None,
    reason: str = "",
    alias: str = "",
    strategy: str = RolloutStrategy.BLUE_GREEN,
    plan: dict[str, Any] | None = None,
) -> Rollout:
    """Queue a rollout of a version into the idle slot. One active rollout per deployment.

    Name the version by ``version_number`` or by ``alias`` (exactly one): an alias is
    resolved here, under the deployment's lock, and recorded on the rollout. ``strategy``
    ``canary`` or ``shadow`` takes ``plan`` (deployments.services.progressive.plan_clean) and
    needs a live version to be compared with.
    """
    if strategy not in RolloutStrategy.values:
        raise InvalidInput(
            f"Unknown strategy {strategy!r}; one of {', '.join(RolloutStrategy.values)}.",
            code="invalid_strategy",
        )
    progressive = strategy in (RolloutStrategy.CANARY, RolloutStrategy.SHADOW)
    if not progressive and plan:
        raise InvalidInput("A plan is for canary and shadow rollouts only.", code="invalid_plan")
    plan = plan_clean(strategy, plan) if progressive else {}
    deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
    if (version_number is None) == (not alias):
        raise InvalidInput(
            "Name the version to roll out by 'version' or by 'alias', not both or neither.",
            code="version_or_alias",
        )
    if version_number is None:  # named by alias
        version_number = alias_version_number(deployment=deployment, alias=alias)
    version = ModelVersion.objects.filter(model=deployment.model_id, number=version_number).first()
    if version is None:
        raise NotFound(f"{deployment.model.name} has no version {version_number}.")
    _deployable(deployment, version)
    active = Rollout.objects.filter(deployment=deployment, state__in=ACTIVE_ROLLOUT_STATES).first()
    if active is not None:
        raise Conflict(
            f"Rollout {active.pk} of {deployment} is still {active.state}; wait for it to finish.",
            code="rollout_in_progress",
        )
    live = (
        Slot.objects.select_related("version")
        .filter(deployment=deployment, color=deployment.live_slot)
        .first()
    )
    if live is not None and live.version_id == version.pk:
        raise Conflict(f"{deployment} already serves {version}.", code="already_live")
    if progressive and (live is None or live.version is None):
        raise InvalidState(
            f"{deployment} serves no version yet: a {strategy} needs a live version to be "
            "compared with. Roll out the first version blue-green.",
            code="canary_needs_live_version",
        )
    # A rollout still baking is done baking: the slot it kept warm is about to be reused.
    end_baking(deployment, to=RolloutState.LIVE, note="bake ended early: a new rollout started")
    target = other_color(deployment.live_slot) if deployment.live_slot else SlotColor.BLUE
    rollout = Rollout.objects.create(
        deployment=deployment,
        version=version,
        alias=alias,
        kind=RolloutKind.ROLLOUT,
        target_slot=target,
        previous_version=live.version if live else None,
        created_by=actor,
        reason=reason,
        strategy=strategy,
        plan=plan,
    )
    via = f" (alias {alias})" if alias else ""
    steps = ", ".join(f"{p} %" for p in plan.get("steps", []))
    how: dict[str, str] = {
        RolloutStrategy.CANARY: f" as a canary in steps of {steps}",
        RolloutStrategy.SHADOW: f" as a shadow of {plan.get('mirror_percent')} % of live requests",
    }
    how_text = how.get(strategy, "")
    log_step(
        rollout, f"rollout of v{version.number}{via} into the {target} slot{how_text} requested"
    )
    rollout.save(update_fields=["steps"])
    audit_record(
        actor=actor,
        action=AuditAction.ROLLOUT_STATE_CHANGED,
        obj=rollout,
        reason=reason,
        after={
            "state": rollout.state,
            "version": version.number,
            "slot": target,
            "strategy": strategy,
            **({"alias": alias} if alias else {}),
            **({"plan": plan} if plan else {}),
        },
    )
    enqueue_advance(rollout.pk)
    return rollout


def _step_pending(rollout: Rollout) -> bool:
    build = build_ensure(version=rollout.version)
    if not transition(rollout, RolloutState.BUILDING, "build requested"):
        return False
    if build.state != BuildState.SUCCEEDED:
        from deployments.tasks import build_run_task

        transaction.on_commit(lambda: build_run_task.delay(build.pk))
        return False  # the build task wakes this rollout when it is done
    return True


def _step_building(rollout: Rollout) -> bool:
    build = build_ensure(version=rollout.version)
    if build.state == BuildState.FAILED:
        fail(rollout, f"build failed: {build.error}")
        return False
    if build.state != BuildState.SUCCEEDED:
        from deployments.tasks import build_run_task

        build_run_task.delay(build.pk)  # harmless if one is already running (claim)
        return False
    return transition(
        rollout,
        RolloutState.STARTING,
        f"Bento {build.bento_tag} ready"
        + (f" (built in {build.seconds:.1f}s)" if build.seconds else ""),
    )


def _step_starting(rollout: Rollout) -> bool:
    build = build_ensure(version=rollout.version)
    slot = Slot.objects.select_related("deployment").get(
        deployment=rollout.deployment, color=rollout.target_slot
    )
    # The Bento may have been built long ago: the file must still be the approved one.
    mismatch = artifact_mismatch(version=rollout.version)
    if mismatch is not None:
        artifact_mismatch_record(deployments=[rollout.deployment], error=mismatch)
        fail(rollout, f"{slot} not started: {mismatch}")
        return False
    Slot.objects.filter(pk=slot.pk).update(
        state=SlotState.STARTING, version=rollout.version, bento_tag=build.bento_tag, url=""
    )
    try:
        build_bento_available(build)
        handle = backends.runtime_backend().slot_start(
            slot_key=slot.runtime_key,
            bento_tag=build.bento_tag,
            replicas=_replicas_to_start(rollout.deployment),
            workers=rollout.deployment.workers,
            batch=(rollout.deployment.batch_max_size, rollout.deployment.batch_max_latency_ms),
            # A shadow only mirrors: its servers must never take CPU from the live ones.
            priority=PRIORITY_LOW
            if rollout.strategy == RolloutStrategy.SHADOW
            else PRIORITY_NORMAL,
        )
    except (RuntimeBackendError, bento.BentoError) as exc:
        Slot.objects.filter(pk=slot.pk).update(state=SlotState.FAILED)
        tail = getattr(exc, "log_tail", "") or getattr(exc, "log", "")
        fail(rollout, f"{slot} did not start: {exc}" + (f"\n{tail[-2000:]}" if tail else ""))
        return False
    urls = handle.urls or (handle.url,)
    Slot.objects.filter(pk=slot.pk).update(
        state=SlotState.READY,
        url=handle.url,
        replicas=[{"index": index, "url": url, "state": "ready"} for index, url in enumerate(urls)],
    )
    where = handle.url if len(urls) == 1 else f"{len(urls)} replicas ({', '.join(urls)})"
    return transition(rollout, RolloutState.VERIFYING, f"{slot} ready at {where}")


def _replicas_to_start(deployment: Deployment) -> int:
    """As many replicas as the live slot runs now (the new version takes the same load when
    traffic switches), within the deployment's range; its minimum for a first rollout."""
    live = Slot.objects.filter(deployment=deployment, color=deployment.live_slot).first()
    running = len(live.replicas) if live is not None and deployment.live_slot else 0
    return min(deployment.replicas_max, max(deployment.replicas_min, running))


def _smoke_instances(version: ModelVersion) -> list[Any]:
    """The JSON rows validation predicted on, keyed by the contract's feature names:
    exactly what a client would send (NaN already null)."""
    load = version.validation_report.get("load") or {}
    rows = load.get("smoke_rows")
    if rows:
        return list(rows)
    # A version validated before contracts were recorded: one positional row of zeros.
    return [[0.0] * int(version.signature.get("n_features") or 1)]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a == b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))
    return bool(a == b)


def _slot_error_text(response: httpx.Response) -> str:
    """The slot's own words for a refused smoke request (its error body's message)."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict) and error.get("message"):
        details = error.get("details") or {}
        return f"{error.get('code', 'error')}: {error['message']}" + (
            f" {json.dumps(details)}" if details else ""
        )
    return response.text[:2000] or response.reason_phrase


def _step_verifying(rollout: Rollout) -> bool:
    slot = Slot.objects.get(deployment=rollout.deployment, color=rollout.target_slot)
    version = rollout.version
    load = version.validation_report.get("load") or {}
    expected = load.get("predictions_preview") or []
    expected_proba = load.get("probabilities_preview")
    instances = _smoke_instances(version)
    replay = bool(load.get("smoke_rows"))
    try:
        response = httpx.post(f"{slot.url}/predict", json={"instances": instances}, timeout=30)
    except httpx.HTTPError as exc:
        fail(rollout, f"smoke request to {slot} failed: {exc}")
        return False
    if response.status_code != 200:
        fail(
            rollout,
            f"smoke request to {slot} was refused ({response.status_code}): "
            + _slot_error_text(response),
        )
        return False
    try:
        body = response.json()
        predictions = body["predictions"]
    except (ValueError, KeyError, TypeError) as exc:
        fail(rollout, f"smoke request to {slot} answered no predictions: {exc}")
        return False
    if replay and expected and not _same(predictions[: len(expected)], expected):
        fail(
            rollout,
            f"{slot} answered {predictions[: len(expected)]} on the validation sample; "
            f"validation answered {expected}",
        )
        return False
    if replay and expected_proba and not _same(body.get("probabilities"), expected_proba):
        fail(
            rollout,
            f"{slot} answered probabilities {body.get('probabilities')} on the validation "
            f"sample; validation answered {expected_proba}",
        )
        return False
    smoked = f"smoke request answered {len(predictions)} prediction(s)" + (
        " matching validation" if replay and expected else ""
    )
    if rollout.strategy in (RolloutStrategy.CANARY, RolloutStrategy.SHADOW):
        return progressive_enter(rollout, smoked)
    return transition(rollout, RolloutState.SWITCHING, smoked)


def _switch(rollout: Rollout) -> bool:
    """Flip the gateway route to the rollout's slot (atomic in Redis) and start baking.

    The live slot, the route and the move to baking change together: the route is published
    inside the transaction, so a worker killed midway leaves the rollout in ``switching`` with
    the database unchanged; the reconcile sweep then puts the route back (route_repair) and
    resumes the rollout, which switches again.
    """
    deployment = rollout.deployment
    with transaction.atomic():
        Deployment.objects.filter(pk=deployment.pk).update(live_slot=rollout.target_slot)
        published = route_sync(deployment_id=deployment.pk)
        pause_for_tests("switching", rollout)
        bake_until = timezone.now() + timedelta(seconds=deployment.bake_seconds)
        moved = transition(
            rollout,
            RolloutState.BAKING,
            switched_note(
                rollout.target_slot,
                published.version,
                bake_until,
                had_previous=rollout.previous_version_id is not None,
            ),
            bake_until=bake_until,
        )
        if moved:
            enqueue_advance(rollout.pk, countdown=deployment.bake_seconds)
        else:
            # Someone else moved the rollout meanwhile (a duplicate task): do not leave a
            # live slot this transaction set for a rollout it no longer drives.
            transaction.set_rollback(True)
    if not moved:
        route_sync(deployment_id=deployment.pk)
    return False  # baking continues later


def _step_baking(rollout: Rollout) -> bool:
    remaining = (rollout.bake_until - timezone.now()).total_seconds() if rollout.bake_until else 0
    if remaining > 0:
        enqueue_advance(rollout.pk, countdown=remaining)
        return False
    deployment = Deployment.objects.get(pk=rollout.deployment_id)
    if deployment.live_slot == rollout.target_slot:
        old = Slot.objects.select_related("deployment").get(
            deployment=deployment, color=other_color(rollout.target_slot)
        )
        slot_stop(old)
    return transition(rollout, RolloutState.LIVE, "bake period over; previous slot stopped")


STEPS: dict[str, Callable[[Rollout], bool]] = {
    RolloutState.PENDING: _step_pending,
    RolloutState.BUILDING: _step_building,
    RolloutState.STARTING: _step_starting,
    RolloutState.VERIFYING: _step_verifying,
    RolloutState.CANARY: step_canary,
    RolloutState.SHADOW: step_shadow,
    RolloutState.SWITCHING: _switch,
    RolloutState.BAKING: _step_baking,
}


def rollout_advance(*, rollout_id: int, holder: str | None = None) -> Rollout:
    """Run the rollout's steps until it waits (for a build or the bake timer) or ends.

    Under the rollout's lease (deployments.services.leases): while one worker drives the
    steps, a duplicate or redelivered task raises LeaseHeld instead of running them beside
    it; a worker that dies mid-step is found by its lapsed lease and the sweep resumes.
    """
    holder = holder or worker_identity()
    driven = Rollout.objects.filter(state__in=list(STEPS))
    if not lease_take(queryset=driven, pk=rollout_id, holder=holder):
        rollout = Rollout.objects.get(pk=rollout_id)
        if rollout.state in STEPS:
            raise LeaseHeld(f"rollout {rollout_id} is driven by {rollout.lease_holder}")
        return rollout  # ended: nothing to drive
    with lease_kept(model=Rollout, pk=rollout_id, holder=holder):
        return _rollout_steps_run(rollout_id)


def _rollout_steps_run(rollout_id: int) -> Rollout:
    while True:
        rollout = Rollout.objects.select_related("deployment", "version__model").get(pk=rollout_id)
        step = STEPS.get(rollout.state)
        if step is None:
            return rollout
        try:
            if not step(rollout):
                return Rollout.objects.get(pk=rollout_id)
        except Exception as exc:  # an unexpected error fails the rollout cleanly, not silently
            logger.exception("rollout %s: step %s crashed", rollout_id, rollout.state)
            if rollout.state in ACTIVE_ROLLOUT_STATES:
                fail(rollout, f"{rollout.state} step crashed: {exc.__class__.__name__}: {exc}")
            raise
