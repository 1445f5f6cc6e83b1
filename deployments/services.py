"""Deployment writes: creating deployments, builds, and the blue-green rollout state machine.

A rollout moves through pending → building → starting → verifying → switching → baking →
live (or failed / rolled_back). Each step's work is idempotent (building reuses the Bento,
starting a slot that already serves the Bento is a no-op, publishing a route twice is
harmless), and each transition is a conditional UPDATE on the state it starts from, so a
redelivered task or the reconciliation sweep can run any step again without harm.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from accounts.models import User
from core.choices import AuditAction
from core.errors import Conflict, InvalidInput, InvalidState, NotFound
from core.services import audit_record
from deployments import backends
from deployments.choices import (
    ACTIVE_ROLLOUT_STATES,
    BuildState,
    Environment,
    RolloutKind,
    RolloutState,
    SlotColor,
    SlotState,
)
from deployments.follow import alias_version_number
from deployments.integrations import bentoml as bento
from deployments.models import Build, Deployment, DeploymentEvent, DeploymentKey, Rollout, Slot
from deployments.runtime.base import RuntimeBackendError
from gateway.routes import ROUTES_KEY, Route, deployment_key_hash, route_parse_one, route_publish
from registry.choices import ReviewDecision, VersionState
from registry.models import ModelVersion, RegisteredModel, name_validator
from registry.services.artifacts import artifact_local_path, artifact_store, file_sha256

logger = logging.getLogger(__name__)

S = RolloutState
DEPLOYABLE_STATES = {
    Environment.PRODUCTION: {VersionState.APPROVED},
    Environment.STAGING: {VersionState.VALIDATED, VersionState.IN_REVIEW, VersionState.APPROVED},
}
KEY_PREFIX = "myd_"


def _other(color: str) -> str:
    return SlotColor.GREEN if color == SlotColor.BLUE else SlotColor.BLUE


# --- deployments and keys ----------------------------------------------------------------


@transaction.atomic
def deployment_create(
    *,
    name: str,
    model: RegisteredModel,
    environment: str,
    actor: User,
    bake_seconds: int = 300,
    guard_policy: dict[str, Any] | None = None,
    description: str = "",
) -> Deployment:
    """A deployment with its two (stopped) slots; nothing serves until the first rollout."""
    try:
        name_validator(name)
    except ValidationError as exc:
        raise InvalidInput(f"name: {exc.messages[0]}") from exc
    if environment not in Environment.values:
        raise InvalidInput(f"environment must be one of {', '.join(Environment.values)}.")
    if Deployment.objects.filter(name__iexact=name).exists():
        raise Conflict(f"A deployment named {name!r} already exists.", code="name_taken")
    try:
        with transaction.atomic():
            deployment = Deployment.objects.create(
                name=name,
                model=model,
                environment=environment,
                bake_seconds=bake_seconds,
                guard_policy=guard_policy or {},
                description=description,
                created_by=actor,
            )
    except IntegrityError as exc:
        raise Conflict(f"A deployment named {name!r} already exists.", code="name_taken") from exc
    Slot.objects.bulk_create(Slot(deployment=deployment, color=c) for c in SlotColor.values)
    audit_record(
        actor=actor,
        action=AuditAction.DEPLOYMENT_CREATED,
        obj=deployment,
        after={"model": model.name, "environment": environment, "bake_seconds": bake_seconds},
    )
    return deployment


@transaction.atomic
def deployment_key_create(
    *, deployment: Deployment, name: str, actor: User | None
) -> tuple[DeploymentKey, str]:
    """Issue a gateway key for the deployment; the plaintext is returned once, never stored."""
    name = (name or "default").strip()
    if not name:
        raise InvalidInput("name: a key needs a name (or leave it out for 'default').")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    record = DeploymentKey.objects.create(
        deployment=deployment, name=name, digest=deployment_key_hash(key)
    )
    audit_record(
        actor=actor,
        action=AuditAction.DEPLOYMENT_KEY_CREATED,
        obj=record,
        after={"deployment": deployment.name, "name": record.name, "key_id": record.pk},
    )
    # The gateway learns the key when the route is republished (pub/sub: milliseconds).
    transaction.on_commit(lambda: route_sync(deployment_id=deployment.pk))
    return record, key


@transaction.atomic
def deployment_key_revoke(
    *, deployment: Deployment, key_id: int, actor: User | None, reason: str = ""
) -> DeploymentKey:
    """Revoke one of the deployment's keys; the gateway refuses it once the route is republished.

    Revoking is final (a revoked key cannot come back; issue a new one), so revoking twice is a
    conflict rather than a silent success.
    """
    key = (
        DeploymentKey.objects.select_for_update()
        .select_related("deployment")
        .filter(deployment=deployment, pk=key_id)
        .first()
    )
    if key is None:
        raise NotFound(f"{deployment} has no key with id {key_id}.")
    if key.revoked_at is not None:
        raise Conflict(
            f"Key {key.name!r} (id {key.pk}) of {deployment} was already revoked at "
            f"{key.revoked_at:%Y-%m-%d %H:%M:%S} UTC.",
            code="key_already_revoked",
        )
    key.revoked_at = timezone.now()
    key.save(update_fields=["revoked_at"])
    audit_record(
        actor=actor,
        action=AuditAction.DEPLOYMENT_KEY_REVOKED,
        obj=key,
        reason=reason,
        before={"revoked_at": None},
        after={"deployment": deployment.name, "name": key.name, "key_id": key.pk},
    )
    transaction.on_commit(lambda: route_sync(deployment_id=deployment.pk))
    return key


def route_sync(*, deployment_id: int) -> Route:
    """Publish the deployment's route as the database records it (idempotent).

    Under the deployment's row lock, published before the lock is released: a switch or a
    rollback publishes its route inside the transaction that records it (holding this lock),
    so a concurrent sync -- the reconcile sweep, a key change -- waits for it and publishes the
    committed state after it, never a stale one over it.
    """
    with transaction.atomic(savepoint=False):
        deployment = Deployment.objects.select_for_update().get(pk=deployment_id)
        live = (
            Slot.objects.select_related("version")
            .filter(deployment=deployment, color=deployment.live_slot)
            .first()
            if deployment.live_slot
            else None
        )
        route = _route_of(deployment, live)
        route_publish(backends.route_store(), route)
    return route


def _route_of(deployment: Deployment, live: Slot | None) -> Route:
    """The route that sends ``deployment``'s traffic to ``live`` (its version loaded)."""
    key_hashes = tuple(
        DeploymentKey.objects.filter(deployment=deployment, revoked_at__isnull=True)
        .order_by("created_at", "id")
        .values_list("digest", flat=True)
    )
    if live is None or live.version is None or not live.url:
        return Route(
            deployment=deployment.name,
            version=0,
            slot=SlotColor.BLUE,
            upstream="http://127.0.0.1:1",
            key_hashes=key_hashes,
            state="none",
        )
    return Route(
        deployment=deployment.name,
        version=live.version.number,
        slot=live.color,
        upstream=live.url,
        key_hashes=key_hashes,
        state="live",
    )


def route_repair(*, deployment: Deployment) -> bool:
    """Republish a route that Redis lost or that disagrees with the database."""
    with transaction.atomic():
        # The lock first (route_sync takes it again, harmlessly): what Redis holds is read
        # after any switch in flight has committed and published.
        Deployment.objects.select_for_update().only("pk").get(pk=deployment.pk)
        stored = route_parse_one(
            deployment.name, backends.route_store().hget(ROUTES_KEY, deployment.name)
        )
        wanted = route_sync(deployment_id=deployment.pk)
    if stored is not None and (
        stored.version,
        stored.slot,
        stored.upstream,
        stored.state,
        stored.key_hashes,
    ) == (wanted.version, wanted.slot, wanted.upstream, wanted.state, wanted.key_hashes):
        return False
    event_record(
        deployment=deployment,
        kind="route_republished",
        message=(
            "route was missing from Redis"
            if stored is None
            else "route in Redis disagreed with the database"
        )
        + f"; republished v{wanted.version} on {wanted.slot} ({wanted.state})",
    )
    return True


def event_record(*, deployment: Deployment, kind: str, message: str, slot: str = "") -> None:
    DeploymentEvent.objects.create(
        deployment=deployment, kind=kind, message=message[:5000], slot=slot
    )


# --- artifact integrity --------------------------------------------------------------------

ARTIFACT_MISMATCH_EVENT = "artifact_mismatch"


def artifact_mismatch(*, version: ModelVersion, path: Path | None = None) -> str | None:
    """Re-hash the stored artifact (streamed) and say why it is not the reviewed file, if so.

    Approvals are bound to the sha256 recorded at upload, which every review's evidence
    repeats: the file a Bento is built from, or a slot is started for, must still hash to
    it. ``path`` is a local copy already at hand (the build's); None reads from storage.
    Returns None when the file is the one that was reviewed.
    """
    expected = version.artifact_sha256
    reviewed = {
        evidence.get("artifact_sha256")
        for evidence in version.reviews.filter(decision=ReviewDecision.APPROVE).values_list(
            "evidence", flat=True
        )
    } - {None}
    if reviewed - {expected}:
        return (
            f"the approvals of {version} name artifact sha256 {', '.join(sorted(reviewed))}, "
            f"but the version records {expected}: refusing to deploy it"
        )
    try:
        if path is not None:
            actual = file_sha256(path)
        else:
            with artifact_local_path(version.artifact_path) as local:
                actual = file_sha256(local)
    except OSError as exc:
        return f"the stored artifact of {version} cannot be read ({exc.strerror or exc})"
    if actual != expected:
        return (
            f"the stored artifact of {version} has sha256 {actual}, but {expected} was "
            "uploaded and reviewed: refusing to deploy a file nobody approved"
        )
    return None


def _artifact_mismatch_record(*, deployments: list[Deployment], error: str) -> None:
    logger.error("artifact check failed: %s", error)
    for deployment in deployments:
        event_record(deployment=deployment, kind=ARTIFACT_MISMATCH_EVENT, message=error)


# --- builds ------------------------------------------------------------------------------


def build_ensure(*, version: ModelVersion) -> Build:
    build, _ = Build.objects.get_or_create(version=version)
    return build


def build_claim(*, build_id: int) -> bool:
    """pending (or a build abandoned by a dead worker) → building, by one worker only."""
    stale = timezone.now() - timedelta(seconds=settings.MODELYARD_BUILD_STALE_SECONDS)
    claimed = Build.objects.filter(pk=build_id, state=BuildState.PENDING).update(
        state=BuildState.BUILDING, started_at=timezone.now()
    )
    if not claimed:
        claimed = Build.objects.filter(
            pk=build_id, state=BuildState.BUILDING, started_at__lt=stale
        ).update(started_at=timezone.now())
    return bool(claimed)


def build_run(*, build_id: int) -> Build:
    """Turn the version into a Bento (once), wake the rollouts waiting on it, then export it.

    The rollouts are woken as soon as the Bento is in this machine's store: exporting the
    archive to artifact storage (a child process importing BentoML, plus tar.xz: 1-3 s here)
    is only needed by other machines, so it runs after, off the rollout's critical path
    (bento_export packs a private copy of the Bento, so the slot starting meanwhile never sees
    BentoML's half-filled export directory). A build whose export failed stays succeeded
    without an archive; running the task again exports it (see build_archive_ensure).
    """
    if not build_claim(build_id=build_id):
        build = Build.objects.get(pk=build_id)
        if build.state == BuildState.SUCCEEDED and not build.archive_path:
            build_archive_ensure(build_id=build_id)
        return Build.objects.get(pk=build_id)
    build = Build.objects.select_related("version__model").get(pk=build_id)
    _pause_for_tests("build", build)  # claimed (building), nothing built yet
    version = build.version
    home = backends.bento_home()
    mismatch: str | None = None
    with tempfile.TemporaryDirectory(prefix="modelyard-build-") as tmp:
        log_path = Path(tmp) / "build.log"
        try:
            with artifact_local_path(version.artifact_path) as artifact:
                mismatch = artifact_mismatch(version=version, path=artifact)
                if mismatch is not None:
                    raise bento.BentoError(mismatch)
                result = bento.bento_build(
                    home=home,
                    model_name=version.model.name,
                    version=version.number,
                    artifact_path=artifact,
                    framework=version.framework,
                    fmt=version.artifact_format,
                    feature_names=version.signature.get("feature_names"),
                    loader=version.loader or None,
                    contract=version.contract or None,
                    log_path=log_path,
                    timeout=settings.MODELYARD_BUILD_TIMEOUT_SECONDS,
                )
        except bento.BentoError as exc:
            Build.objects.filter(pk=build_id).update(
                state=BuildState.FAILED,
                error=str(exc),
                log=exc.log[-200_000:],
                finished_at=timezone.now(),
            )
            logger.warning("build %s failed: %s", build_id, exc)
            if mismatch is not None:
                waiting = Deployment.objects.filter(
                    rollouts__version=version, rollouts__state=S.BUILDING
                ).distinct()
                _artifact_mismatch_record(deployments=list(waiting), error=mismatch)
        else:
            Build.objects.filter(pk=build_id).update(
                state=BuildState.SUCCEEDED,
                bento_tag=result.bento_tag,
                log=result.log[-200_000:],
                seconds=result.seconds,
                finished_at=timezone.now(),
                error="",
            )
    build.refresh_from_db()
    for rollout_id in Rollout.objects.filter(version=version, state=S.BUILDING).values_list(
        "id", flat=True
    ):
        _enqueue_advance(rollout_id)
    if build.state == BuildState.SUCCEEDED:
        build_archive_ensure(build_id=build_id)
        build.refresh_from_db()
    return build


def build_archive_ensure(*, build_id: int) -> Build:
    """Export a succeeded build's Bento to artifact storage once (for other machines)."""
    build = Build.objects.select_related("version").get(pk=build_id)
    if build.state != BuildState.SUCCEEDED or build.archive_path:
        return build
    version = build.version
    with tempfile.TemporaryDirectory(prefix="modelyard-export-") as tmp:
        try:
            archive = bento.bento_export(
                home=backends.bento_home(),
                bento_tag=build.bento_tag,
                dest=Path(tmp) / "export.bento",
            )
            stored = artifact_store(
                local_path=archive,
                folder=f"bentos/{version.model_id}",
                basename=f"v{version.number}.bento",
            )
        except (bento.BentoError, OSError) as exc:
            # Serving here does not need the archive; only another machine would.
            logger.warning("build %s: exporting the Bento failed: %s", build_id, exc)
            return build
    Build.objects.filter(pk=build_id, archive_path="").update(archive_path=stored.path)
    build.refresh_from_db()
    return build


# --- rollouts ------------------------------------------------------------------------------


def _log_step(rollout: Rollout, message: str, **extra: Any) -> None:
    rollout.steps = [
        *rollout.steps,
        {"at": timezone.now().isoformat(), "state": rollout.state, "message": message, **extra},
    ]


def _enqueue_advance(rollout_id: int, countdown: float = 0) -> None:
    from deployments.tasks import rollout_advance_task

    transaction.on_commit(
        lambda: rollout_advance_task.apply_async((rollout_id,), countdown=countdown)
    )


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


def _end_baking(deployment: Deployment, *, to: str, note: str) -> None:
    """End the deployment's baking rollout (live, or rolled back), with a step note."""
    for baking in Rollout.objects.select_for_update().filter(deployment=deployment, state=S.BAKING):
        baking.state = to
        baking.finished_at = timezone.now()
        _log_step(baking, note)
        baking.save(update_fields=["state", "finished_at", "steps"])


@transaction.atomic
def rollout_start(
    *,
    deployment: Deployment,
    version_number: int | None = None,
    actor: User | None,
    reason: str = "",
    alias: str = "",
) -> Rollout:
    """Queue a rollout of a version into the idle slot. One active rollout per deployment.

    Name the version by ``version_number`` or by ``alias`` (exactly one): an alias is
    resolved here, under the deployment's lock, and recorded on the rollout.
    """
    deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
    if (version_number is None) == (not alias):
        raise InvalidInput(
            "Name the version to roll out by 'version' or by 'alias', not both or neither.",
            code="version_or_alias",
        )
    if alias:
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
    # A rollout still baking is done baking: the slot it kept warm is about to be reused.
    _end_baking(deployment, to=S.LIVE, note="bake ended early: a new rollout started")
    target = _other(deployment.live_slot) if deployment.live_slot else SlotColor.BLUE
    rollout = Rollout.objects.create(
        deployment=deployment,
        version=version,
        alias=alias,
        kind=RolloutKind.ROLLOUT,
        target_slot=target,
        previous_version=live.version if live else None,
        created_by=actor,
        reason=reason,
    )
    via = f" (alias {alias})" if alias else ""
    _log_step(rollout, f"rollout of v{version.number}{via} into the {target} slot requested")
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
            **({"alias": alias} if alias else {}),
        },
    )
    _enqueue_advance(rollout.pk)
    return rollout


def slot_is_warm(slot: Slot, version: ModelVersion) -> bool:
    """Whether ``slot`` can take traffic back right now, judged without probing its server.

    The backend answers from its own records (its process still alive, the supervisor's last
    /readyz probe not failing): an HTTP probe inside the rollback call cost 5-100 ms under
    load, which is most of the rollback's budget. A slot that died since the last probe
    answers 502 for the seconds until the sweep restarts it -- the same as if it died a
    moment after a probe.
    """
    if slot.version_id != version.pk or slot.state != SlotState.READY or not slot.url:
        return False
    try:
        return backends.runtime_backend().slot_serving(
            slot_key=slot.runtime_key, bento_tag=slot.bento_tag
        )
    except RuntimeBackendError:
        return False


def deployment_rollback(
    *,
    deployment: Deployment,
    actor: User | None,
    reason: str = "",
    evidence: dict[str, Any] | None = None,
) -> Rollout:
    """Flip traffic back to the previous version: instantly when its slot is still warm.

    With a warm slot the route flips first, inside the transaction that records the rollback
    (rollout row, audit, step log), so traffic moves without waiting for those writes. If the
    transaction then fails, the route is put back to what the database says; if the process
    dies before it commits, the reconcile sweep's route_repair does the same.
    """
    flipped: list[bool] = []
    try:
        rollout = _rollback(
            deployment=deployment,
            actor=actor,
            reason=reason,
            evidence=evidence,
            flipped=flipped,
        )
    except BaseException:
        if flipped:
            # The database rolled back to the old live slot: make the route agree again.
            try:
                route_sync(deployment_id=deployment.pk)
            except Exception:
                logger.exception(
                    "rollback of %s failed after its route flipped, and the route could not be "
                    "put back; the reconcile sweep will repair it",
                    deployment,
                )
        raise
    return rollout


@transaction.atomic
def _rollback(
    *,
    deployment: Deployment,
    actor: User | None,
    reason: str,
    evidence: dict[str, Any] | None,
    flipped: list[bool],
) -> Rollout:
    # The lock and the "rollout in progress?" check in one query: each one before the
    # route flips is on the clock.
    deployment = (
        Deployment.objects.select_for_update()
        .annotate(
            rolling=Exists(
                Rollout.objects.filter(deployment=OuterRef("pk"), state__in=ACTIVE_ROLLOUT_STATES)
            )
        )
        .get(pk=deployment.pk)
    )
    if not deployment.live_slot:
        raise InvalidState(f"{deployment} serves nothing yet; there is nothing to roll back.")
    if deployment.rolling:
        active = Rollout.objects.filter(
            deployment=deployment, state__in=ACTIVE_ROLLOUT_STATES
        ).first()
        # None if it ended since the lock query (rollouts move without the deployment lock).
        which = f"Rollout {active.pk} is still {active.state}" if active else "A rollout was active"
        raise Conflict(
            f"{which} and has not moved traffic yet; the live version is unchanged.",
            code="rollout_in_progress",
        )
    slots = {}
    for slot in Slot.objects.select_related("version").filter(deployment=deployment):
        slot.deployment = deployment  # runtime_key reads it: no query per slot
        slots[slot.color] = slot
    live, other = slots[deployment.live_slot], slots[_other(deployment.live_slot)]
    target_version = other.version
    if target_version is None:
        last = (
            Rollout.objects.filter(deployment=deployment, state__in=[S.BAKING, S.LIVE])
            .select_related("previous_version")
            .order_by("-created_at")
            .first()
        )
        target_version = last.previous_version if last else None
    if target_version is None or target_version.pk == live.version_id:
        raise InvalidState(f"{deployment} has no previous version to roll back to.")
    warm = slot_is_warm(other, target_version)
    if warm:
        # Traffic first: the rows below only record what happened. Every query before the
        # publish is on the clock of the flip, so the route is built from the rows in hand.
        Deployment.objects.filter(pk=deployment.pk).update(live_slot=other.color)
        deployment.live_slot = other.color
        flipped.append(True)
        # Published while this transaction holds the deployment's row lock: any other
        # route_sync (a key change, the reconcile sweep) waits for the commit and then
        # publishes this same, committed state -- never the old slot over it.
        route_publish(backends.route_store(), _route_of(deployment, other))
    _end_baking(
        deployment, to=S.ROLLED_BACK, note="rolled back" + (f": {reason}" if reason else "")
    )
    bake_until = timezone.now() + timedelta(seconds=deployment.bake_seconds) if warm else None
    # A warm rollback is switched already: its rollout starts out baking (one row written,
    # not a switching row moved on by a second transition).
    rollout = Rollout(
        deployment=deployment,
        version=target_version,
        previous_version=live.version,
        kind=RolloutKind.ROLLBACK,
        target_slot=other.color,
        state=S.SWITCHING if warm else S.STARTING,  # the state its first step is logged in
        bake_until=bake_until,
        created_by=actor,
        reason=reason,
    )
    _log_step(
        rollout,
        f"rollback to v{target_version.number} "
        + ("(slot warm: instant switch)" if warm else "(slot cold: starting it first)"),
        evidence=evidence or {},
    )
    if warm:
        rollout.state = S.BAKING
        _log_step(
            rollout,
            _switched_note(other.color, target_version.number, bake_until, had_previous=True),
        )
    rollout.save()
    audit_record(
        actor=actor,
        action=AuditAction.ROLLBACK,
        obj=rollout,
        reason=reason,
        before={"version": live.version.number if live.version else None},
        after={
            "version": target_version.number,
            "warm": warm,
            "state": rollout.state,
            "evidence": evidence or {},
        },
    )
    # Warm: the advance ends the bake; cold: it starts the previous version's slot now.
    _enqueue_advance(rollout.pk, countdown=deployment.bake_seconds if warm else 0)
    return rollout


def _transition(rollout: Rollout, to: str, message: str, **fields: Any) -> bool:
    """Move ``rollout`` from its current state to ``to`` if nobody else has (conditional)."""
    with transaction.atomic():
        current = (
            Rollout.objects.select_for_update().filter(pk=rollout.pk, state=rollout.state).first()
        )
        if current is None:
            return False
        before = current.state
        current.state = to
        current.state_changed_at = timezone.now()
        for name, value in fields.items():
            setattr(current, name, value)
        if to in (S.LIVE, S.FAILED, S.ROLLED_BACK):
            current.finished_at = timezone.now()
        _log_step(current, message)
        current.save()
        audit_record(
            actor=None,
            action=AuditAction.ROLLOUT_STATE_CHANGED,
            obj=current,
            reason=message[:500],
            before={"state": before},
            after={"state": to, "version": current.version.number},
        )
    rollout.refresh_from_db()
    return True


def _fail(rollout: Rollout, error: str) -> None:
    logger.warning("rollout %s failed: %s", rollout.pk, error)
    if _transition(rollout, S.FAILED, f"failed: {error}", error=error[:5000]):
        slot = Slot.objects.select_related("deployment").get(
            deployment=rollout.deployment, color=rollout.target_slot
        )
        if slot.deployment.live_slot != slot.color:  # never stop what serves traffic
            _slot_stop(slot)


def _slot_stop(slot: Slot) -> None:
    try:
        backends.runtime_backend().slot_stop(slot_key=slot.runtime_key)
    except RuntimeBackendError as exc:
        logger.warning("stopping %s failed: %s", slot, exc)
    Slot.objects.filter(pk=slot.pk).update(state=SlotState.STOPPED, url="")


def _step_pending(rollout: Rollout) -> bool:
    build = build_ensure(version=rollout.version)
    if not _transition(rollout, S.BUILDING, "build requested"):
        return False
    if build.state != BuildState.SUCCEEDED:
        from deployments.tasks import build_run_task

        transaction.on_commit(lambda: build_run_task.delay(build.pk))
        return False  # the build task wakes this rollout when it is done
    return True


def _step_building(rollout: Rollout) -> bool:
    build = build_ensure(version=rollout.version)
    if build.state == BuildState.FAILED:
        _fail(rollout, f"build failed: {build.error}")
        return False
    if build.state != BuildState.SUCCEEDED:
        from deployments.tasks import build_run_task

        build_run_task.delay(build.pk)  # harmless if one is already running (claim)
        return False
    return _transition(
        rollout,
        S.STARTING,
        f"Bento {build.bento_tag} ready"
        + (f" (built in {build.seconds:.1f}s)" if build.seconds else ""),
    )


def _bento_available(build: Build) -> None:
    """Import the exported Bento when this machine's store does not have it yet."""
    home = backends.bento_home()
    if bento.bento_exists(home=home, bento_tag=build.bento_tag) or not build.archive_path:
        return
    with artifact_local_path(build.archive_path) as archive:
        bento.bento_import(home=home, archive=archive)


def _step_starting(rollout: Rollout) -> bool:
    build = build_ensure(version=rollout.version)
    slot = Slot.objects.select_related("deployment").get(
        deployment=rollout.deployment, color=rollout.target_slot
    )
    # The Bento may have been built long ago: the file must still be the approved one.
    mismatch = artifact_mismatch(version=rollout.version)
    if mismatch is not None:
        _artifact_mismatch_record(deployments=[rollout.deployment], error=mismatch)
        _fail(rollout, f"{slot} not started: {mismatch}")
        return False
    Slot.objects.filter(pk=slot.pk).update(
        state=SlotState.STARTING, version=rollout.version, bento_tag=build.bento_tag, url=""
    )
    try:
        _bento_available(build)
        handle = backends.runtime_backend().slot_start(
            slot_key=slot.runtime_key, bento_tag=build.bento_tag
        )
    except (RuntimeBackendError, bento.BentoError) as exc:
        Slot.objects.filter(pk=slot.pk).update(state=SlotState.FAILED)
        tail = getattr(exc, "log_tail", "") or getattr(exc, "log", "")
        _fail(rollout, f"{slot} did not start: {exc}" + (f"\n{tail[-2000:]}" if tail else ""))
        return False
    Slot.objects.filter(pk=slot.pk).update(state=SlotState.READY, url=handle.url)
    return _transition(rollout, S.VERIFYING, f"{slot} ready at {handle.url}")


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
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))
    return a == b


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
        _fail(rollout, f"smoke request to {slot} failed: {exc}")
        return False
    if response.status_code != 200:
        _fail(
            rollout,
            f"smoke request to {slot} was refused ({response.status_code}): "
            + _slot_error_text(response),
        )
        return False
    try:
        body = response.json()
        predictions = body["predictions"]
    except (ValueError, KeyError, TypeError) as exc:
        _fail(rollout, f"smoke request to {slot} answered no predictions: {exc}")
        return False
    if replay and expected and not _same(predictions[: len(expected)], expected):
        _fail(
            rollout,
            f"{slot} answered {predictions[: len(expected)]} on the validation sample; "
            f"validation answered {expected}",
        )
        return False
    if replay and expected_proba and not _same(body.get("probabilities"), expected_proba):
        _fail(
            rollout,
            f"{slot} answered probabilities {body.get('probabilities')} on the validation "
            f"sample; validation answered {expected_proba}",
        )
        return False
    return _transition(
        rollout,
        S.SWITCHING,
        f"smoke request answered {len(predictions)} prediction(s)"
        + (" matching validation" if replay and expected else ""),
    )


def _pause_for_tests(step: str, obj: Rollout | Build) -> None:
    """Test-only: hold ``step`` open once so a fault test can kill the worker inside it.

    Active only with ``MODELYARD_TEST_PAUSE_DIR=<dir>`` in the environment (the fault tests set
    it on their stack's worker; nothing else does) and an ``<dir>/arm-<step>`` file the test
    creates: the worker consumes the arm file, creates ``<dir>/<step>-<object id>`` and waits,
    up to 60 s, until that file is removed. Consuming the arm file makes the resumed step run
    through.
    """
    directory = os.environ.get("MODELYARD_TEST_PAUSE_DIR")
    if not directory:
        return
    arm = Path(directory) / f"arm-{step}"
    try:
        arm.unlink()
    except FileNotFoundError:
        return
    hold = Path(directory) / f"{step}-{obj.pk}"
    hold.write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while hold.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _switched_note(slot: str, version: int, bake_until: datetime, *, had_previous: bool) -> str:
    """The step-log line of a route switch (a rollout's, or a warm rollback's)."""
    if not had_previous:
        # A deployment's first rollout: nothing served before, so nothing is kept warm.
        return f"traffic switched to {slot} (v{version}); first version of this deployment"
    return (
        f"traffic switched to {slot} (v{version}); "
        f"previous slot kept warm until {bake_until:%H:%M:%S}"
    )


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
        _pause_for_tests("switching", rollout)
        bake_until = timezone.now() + timedelta(seconds=deployment.bake_seconds)
        moved = _transition(
            rollout,
            S.BAKING,
            _switched_note(
                rollout.target_slot,
                published.version,
                bake_until,
                had_previous=rollout.previous_version_id is not None,
            ),
            bake_until=bake_until,
        )
        if moved:
            _enqueue_advance(rollout.pk, countdown=deployment.bake_seconds)
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
        _enqueue_advance(rollout.pk, countdown=remaining)
        return False
    deployment = Deployment.objects.get(pk=rollout.deployment_id)
    if deployment.live_slot == rollout.target_slot:
        old = Slot.objects.select_related("deployment").get(
            deployment=deployment, color=_other(rollout.target_slot)
        )
        _slot_stop(old)
    return _transition(rollout, S.LIVE, "bake period over; previous slot stopped")


STEPS: dict[str, Callable[[Rollout], bool]] = {
    S.PENDING: _step_pending,
    S.BUILDING: _step_building,
    S.STARTING: _step_starting,
    S.VERIFYING: _step_verifying,
    S.SWITCHING: _switch,
    S.BAKING: _step_baking,
}


def rollout_advance(*, rollout_id: int) -> Rollout:
    """Run the rollout's steps until it waits (for a build or the bake timer) or ends."""
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
                _fail(rollout, f"{rollout.state} step crashed: {exc.__class__.__name__}: {exc}")
            raise


def rollouts_stuck() -> list[int]:
    """Active rollouts whose state has not moved for a while (killed worker, lost message)."""
    limit = timezone.now() - timedelta(seconds=settings.MODELYARD_ROLLOUT_STUCK_SECONDS)
    # A pending rollout only waits for its first task: a minute means the message was lost.
    pending = Rollout.objects.filter(
        state=S.PENDING, state_changed_at__lt=timezone.now() - timedelta(seconds=60)
    )
    baking_due = Rollout.objects.filter(
        state=S.BAKING, bake_until__lt=timezone.now() - timedelta(seconds=60)
    )
    stuck = Rollout.objects.filter(state__in=ACTIVE_ROLLOUT_STATES, state_changed_at__lt=limit)
    return sorted(
        {
            *stuck.values_list("id", flat=True),
            *pending.values_list("id", flat=True),
            *baking_due.values_list("id", flat=True),
        }
    )


def runtime_servers_stop(*, reason: str) -> list[str]:
    """Stop every slot server of the local backend and record each as ``slot_stopped``.

    `make run`'s shutdown calls this (devstack): the next start's sweep restarts them, and
    the deployment's events read "stopped", then "restarted", never "crashed".
    """
    backend = backends.runtime_backend()
    if not hasattr(backend, "servers_stop"):
        return []  # Kubernetes slots outlive the platform's processes by design
    slots_by_key = {s.runtime_key: s for s in Slot.objects.select_related("deployment")}
    lines = []
    for event in backend.servers_stop(reason=reason):
        lines.append(f"{event.slot_key}: {event.kind}: {event.message}")
        slot = slots_by_key.get(event.slot_key)
        if slot is not None:
            event_record(
                deployment=slot.deployment,
                kind=f"slot_{event.kind}",
                message=event.message,
                slot=slot.color,
            )
    return lines


def deployments_reconcile() -> list[str]:
    """Converge every deployment on its recorded state; return what was done.

    Restarts crashed slot servers (the backend's supervisor) and records why, points slot
    URLs and routes at where the servers really are, republishes routes Redis lost, stops
    slots that nothing needs, and resumes stuck rollouts.
    """
    actions: list[str] = []
    backend = backends.runtime_backend()
    slots_by_key = {s.runtime_key: s for s in Slot.objects.select_related("deployment")}
    for event in backend.supervise_once():
        actions.append(f"{event.slot_key}: {event.kind}: {event.message}")
        slot = slots_by_key.get(event.slot_key)
        if slot is not None:
            event_record(
                deployment=slot.deployment,
                kind=f"slot_{event.kind}",
                message=event.message,
                slot=slot.color,
            )
    statuses = {status.slot_key: status for status in backend.slots()}
    needed = set()
    for deployment in Deployment.objects.all():
        active = Rollout.objects.filter(
            deployment=deployment, state__in=[*ACTIVE_ROLLOUT_STATES, S.BAKING]
        )
        for slot in Slot.objects.select_related("deployment").filter(deployment=deployment):
            if slot.color == deployment.live_slot or active.exists():
                needed.add(slot.runtime_key)
            status = statuses.get(slot.runtime_key)
            if (
                status is not None
                and status.running
                and slot.state == SlotState.READY
                and status.url != slot.url
            ):
                Slot.objects.filter(pk=slot.pk).update(url=status.url)
                event_record(
                    deployment=deployment,
                    kind="slot_moved",
                    slot=slot.color,
                    message=f"{slot} now answers at {status.url}",
                )
        if route_repair(deployment=deployment):
            actions.append(f"{deployment}: route republished")
    for status in statuses.values():
        if status.running and status.slot_key not in needed:
            backend.slot_stop(slot_key=status.slot_key)
            actions.append(f"{status.slot_key}: stopped (no deployment needs it)")
    for rollout_id in rollouts_stuck():
        rollout = Rollout.objects.select_related("deployment").get(pk=rollout_id)
        Rollout.objects.filter(pk=rollout_id).update(state_changed_at=timezone.now())
        event_record(
            deployment=rollout.deployment,
            kind="rollout_resumed",
            message=f"rollout {rollout_id} had not moved from {rollout.state}; resumed",
        )
        _enqueue_advance(rollout_id)
        actions.append(f"rollout {rollout_id}: resumed")
    return actions
