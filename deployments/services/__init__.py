"""Deployment writes: deployments and keys, routes, builds, the rollout state machine
(blue-green and canary), rollback and the reconcile sweep. Each public function is one use
case; views, tasks and the other apps call them from here."""

from deployments.choices import DEPLOYABLE_STATES
from deployments.services._steps import event_record
from deployments.services.artifacts import ARTIFACT_MISMATCH_EVENT, artifact_mismatch
from deployments.services.autoscale import autoscale_decide, deployments_autoscale
from deployments.services.bentos import BentoUnavailable, LocalBento, version_bento_local
from deployments.services.builds import build_archive_ensure, build_claim, build_ensure, build_run
from deployments.services.keys import (
    KEY_PREFIX,
    deployment_create,
    deployment_key_create,
    deployment_key_revoke,
)
from deployments.services.progressive import (
    canary_abort,
    canary_act,
    canary_pause,
    canary_promote,
    slot_release,
)
from deployments.services.reconcile import (
    deployments_reconcile,
    rollouts_stuck,
    runtime_servers_stop,
)
from deployments.services.replicas import slot_replicas_sync, slot_scale, upstream_repair
from deployments.services.rollback import deployment_rollback, slot_is_warm
from deployments.services.rollouts import rollout_advance, rollout_start
from deployments.services.routes import route_repair, route_sync

__all__ = [
    "ARTIFACT_MISMATCH_EVENT",
    "DEPLOYABLE_STATES",
    "KEY_PREFIX",
    "BentoUnavailable",
    "LocalBento",
    "artifact_mismatch",
    "autoscale_decide",
    "build_archive_ensure",
    "build_claim",
    "build_ensure",
    "build_run",
    "canary_abort",
    "canary_act",
    "canary_pause",
    "canary_promote",
    "deployment_create",
    "deployment_key_create",
    "deployment_key_revoke",
    "deployment_rollback",
    "deployments_autoscale",
    "deployments_reconcile",
    "event_record",
    "rollout_advance",
    "rollout_start",
    "rollouts_stuck",
    "route_repair",
    "route_sync",
    "runtime_servers_stop",
    "slot_is_warm",
    "slot_release",
    "slot_replicas_sync",
    "slot_scale",
    "upstream_repair",
    "version_bento_local",
]
