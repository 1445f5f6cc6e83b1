"""Builds: a version turned into a Bento once, by one worker, then exported for other machines."""

from __future__ import annotations

import logging
import tempfile
from functools import partial
from pathlib import Path

from django.conf import settings
from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone

from deployments import backends
from deployments.choices import BuildState, RolloutState
from deployments.integrations import bentoml as bento
from deployments.models import Build, Deployment, Rollout
from deployments.services._steps import (
    WORKER_DIED_EVENT,
    enqueue_advance,
    event_record,
    pause_for_tests,
)
from deployments.services.artifacts import artifact_mismatch, artifact_mismatch_record
from deployments.services.leases import (
    lease_break,
    lease_fields,
    lease_kept,
    leases_lapsed,
    worker_identity,
)
from registry.models import ModelVersion
from registry.services.artifacts import artifact_local_path, artifact_store

logger = logging.getLogger(__name__)


def build_ensure(*, version: ModelVersion) -> Build:
    build, _ = Build.objects.get_or_create(version=version)
    return build


def build_claim(*, build_id: int, holder: str) -> bool:
    """pending → building with ``holder``'s lease, by one worker only.

    A build whose worker died goes back to pending only through the reconcile sweep
    (builds_abandoned_requeue), once its lease lapsed: one place decides a worker is dead.
    """
    return bool(
        Build.objects.filter(pk=build_id, state=BuildState.PENDING).update(
            state=BuildState.BUILDING, started_at=timezone.now(), **lease_fields(holder)
        )
    )


def builds_abandoned_requeue() -> list[str]:
    """Builds left in ``building`` by a worker that died (lease lapsed): back to pending,
    one ``worker_died`` event on each deployment waiting for it, queued again."""
    from deployments.tasks import build_run_task

    building = Build.objects.filter(state=BuildState.BUILDING)
    actions = []
    for lapsed in leases_lapsed(building, unheld_counts=True):
        if not lease_break(queryset=building, lapsed=lapsed, state=BuildState.PENDING):
            continue  # renewed meanwhile, or another sweep took it
        build = Build.objects.select_related("version__model").get(pk=lapsed.pk)
        what = (
            f"build worker died ({lapsed.describe()}) while building {build.version}"
            if lapsed.holder
            else f"build of {build.version} was left building with no worker"
        )
        for deployment in Deployment.objects.filter(
            rollouts__version=build.version, rollouts__state=RolloutState.BUILDING
        ).distinct():
            event_record(
                deployment=deployment, kind=WORKER_DIED_EVENT, message=f"{what}; queued again"
            )
        logger.warning("%s; queued again", what)
        transaction.on_commit(partial(build_run_task.delay, build.pk))
        actions.append(f"build {build.pk}: {what}; queued again")
    return actions


def build_run(*, build_id: int, holder: str | None = None) -> Build:
    """Turn the version into a Bento (once), wake the rollouts waiting on it, then export it.

    The rollouts are woken as soon as the Bento is in this machine's store: exporting the
    archive to artifact storage (a child process importing BentoML, plus tar.xz: 1-3 s here)
    is only needed by other machines, so it runs after, off the rollout's critical path
    (bento_export packs a private copy of the Bento, so the slot starting meanwhile never sees
    BentoML's half-filled export directory). A build whose export failed stays succeeded
    without an archive; running the task again exports it (see build_archive_ensure).
    """
    holder = holder or worker_identity()
    if not build_claim(build_id=build_id, holder=holder):
        # Finished, or building under a live worker's lease (a redelivered message): the
        # holder finishes it, or the sweep re-queues it once the lease lapses.
        build = Build.objects.get(pk=build_id)
        if build.state == BuildState.SUCCEEDED and not build.archive_path:
            build_archive_ensure(build_id=build_id)
        return Build.objects.get(pk=build_id)
    with lease_kept(model=Build, pk=build_id, holder=holder):
        try:
            _build_bento(build_id, holder)
        except (OperationalError, InterfaceError):
            raise  # the database, not the build: the task retries, the sweep re-queues
        except Exception as exc:
            # Not a BentoML failure but a bug or a broken file: recorded as the build's
            # failure, so the sweep does not re-queue (and re-crash) it every 15 s.
            logger.exception("build %s crashed", build_id)
            Build.objects.filter(pk=build_id, lease_holder=holder).update(
                state=BuildState.FAILED,
                error=f"build crashed: {exc.__class__.__name__}: {exc}",
                finished_at=timezone.now(),
            )
    build = Build.objects.select_related("version").get(pk=build_id)
    for rollout_id in Rollout.objects.filter(
        version=build.version, state=RolloutState.BUILDING
    ).values_list("id", flat=True):
        enqueue_advance(rollout_id)
    if build.state == BuildState.SUCCEEDED:
        build_archive_ensure(build_id=build_id)
        build.refresh_from_db()
    return build


def _build_bento(build_id: int, holder: str) -> None:
    """The claimed build's work: the Bento, or the failure, recorded on the build unless a
    sweep gave the build to another worker meanwhile (this one's lease lapsed)."""
    build = Build.objects.select_related("version__model").get(pk=build_id)
    pause_for_tests("build", build)  # claimed (building), nothing built yet
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
            Build.objects.filter(pk=build_id, lease_holder=holder).update(
                state=BuildState.FAILED,
                error=str(exc),
                log=exc.log[-200_000:],
                finished_at=timezone.now(),
            )
            logger.warning("build %s failed: %s", build_id, exc)
            if mismatch is not None:
                waiting = Deployment.objects.filter(
                    rollouts__version=version, rollouts__state=RolloutState.BUILDING
                ).distinct()
                artifact_mismatch_record(deployments=list(waiting), error=mismatch)
        else:
            Build.objects.filter(pk=build_id, lease_holder=holder).update(
                state=BuildState.SUCCEEDED,
                bento_tag=result.bento_tag,
                log=result.log[-200_000:],
                seconds=result.seconds,
                finished_at=timezone.now(),
                error="",
            )


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
