"""Operators' deployment pages: create a deployment, issue and revoke gateway keys, the
follow-up actions partial, and "try a prediction".

Writes go through the deployments services (``deployment_create``, ``deployment_key_create``,
``deployment_key_revoke``); a new key's plaintext is rendered once, in the answer to the
POST that made it, and never stored or shown again.

"Try a prediction" is a server-side proxy to the live slot, not a call the browser makes to
the gateway: the gateway needs a deployment key, and the platform keeps only key digests,
so a browser call would need a person to paste a key into the page (and a viewer has none).
The proxy is limited to users who may deploy, sends one small request to the live slot the
way the gateway would (``{"instances": [...]}``), and so never exposes a key; its answers
are not counted in the dashboard's metrics or drift samples, which stay the clients' own.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.permissions import user_has_capability
from core.choices import Capability
from core.errors import DomainError
from deployments import selectors, services
from deployments.choices import RolloutState, SlotState
from deployments.models import Deployment, Rollout
from frontend.example_rows import example_rows
from frontend.forms import DeploymentForm, DeploymentKeyForm
from frontend.views.access import PageRequest, capability_require
from frontend.views.deployments import (
    _deployable_versions,
    _deployment,
    _live_slot,
    rollback_target,
)

# A person trying the model types a few rows, not a batch: larger inputs belong to the
# gateway or a batch job, and the page must never hold a worker for long.
TRY_MAX_ROWS = 20
TRY_MAX_BYTES = 64 * 1024
TRY_TIMEOUT_SECONDS = 10
EXAMPLE_SOURCES = {
    "contract": "model contract (names, order and types)",
    "signature": "signature inferred at validation",
    "reference_schema": "reference sample's columns",
}


def _can_deploy(request: PageRequest) -> bool:
    return user_has_capability(request.user, Capability.DEPLOY)


def actions_context(
    request: PageRequest, deployment: Deployment, current: Rollout | None
) -> dict[str, Any]:
    """The Actions section: rollback and the roll-out list (never the live version).

    ``current`` is the deployment's current rollout (the detail page has read it already)."""
    live, target = rollback_target(deployment)
    return {
        "deployment": deployment,
        "can_deploy": _can_deploy(request),
        # During a canary, "back" is its abort (the canary panel's button): the live version
        # never changed, so a rollback to an older one is not offered.
        "canary_running": current is not None
        and current.state in (RolloutState.CANARY, RolloutState.SHADOW),
        "rollback_to": target,
        "deployable_versions": _deployable_versions(deployment, live),
        "live_version": live,  # a canary needs one to be judged against
    }


def keys_context(request: PageRequest, deployment: Deployment) -> dict[str, Any]:
    """The gateway keys section (names and dates only: the plaintext is never kept)."""
    can_deploy = _can_deploy(request)
    return {
        "deployment": deployment,
        "can_deploy": can_deploy,
        "keys": list(selectors.deployment_key_list(deployment=deployment)) if can_deploy else [],
        "key_form": DeploymentKeyForm() if can_deploy else None,
        "endpoint": f"{settings.MODELYARD_GATEWAY_URL}/d/{deployment.name}/predict",
    }


def try_context(request: PageRequest, deployment: Deployment) -> dict[str, Any]:
    """The "try a prediction" box: an example row of the live version's features."""
    live_slot = _live_slot(deployment)
    version = live_slot.version if live_slot is not None else None
    rows, source = example_rows(version) if version is not None else ([], "")
    return {
        "deployment": deployment,
        "can_deploy": _can_deploy(request),
        "try_version": version,
        "try_example": json.dumps(rows, indent=2) if rows else "",
        "try_example_compact": json.dumps(rows) if rows else "[{}]",
        "try_example_source": EXAMPLE_SOURCES.get(source, ""),
        "endpoint": f"{settings.MODELYARD_GATEWAY_URL}/d/{deployment.name}/predict",
    }


def manage_context(
    request: PageRequest, deployment: Deployment, current: Rollout | None
) -> dict[str, Any]:
    """Everything the detail page needs from this module."""
    return {
        **try_context(request, deployment),
        **keys_context(request, deployment),
        **actions_context(request, deployment, current),
    }


@login_required
@require_GET
def deployment_actions(request: PageRequest, name: str) -> HttpResponse:
    """The Actions partial, refreshed when the status shows another live version or rollout."""
    capability_require(request, Capability.VIEW)
    deployment = _deployment(name)
    return render(
        request,
        "frontend/deployments/_actions.html",
        actions_context(request, deployment, selectors.deployment_current_rollout(deployment)),
    )


@login_required
@require_http_methods(["GET", "POST"])
def deployment_new(request: PageRequest) -> HttpResponse:
    capability_require(request, Capability.DEPLOY)
    form = DeploymentForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                deployment = services.deployment_create(
                    name=form.cleaned_data["name"].strip(),
                    model=form.cleaned_data["model"],
                    environment=form.cleaned_data["environment"],
                    bake_seconds=form.cleaned_data["bake_seconds"],
                    description=form.cleaned_data["description"],
                    actor=request.user,
                )
            except DomainError as exc:
                # The service's own words, beside the field they are about.
                field = "name" if exc.message.startswith("name") or "named" in exc.message else None
                form.add_error(field, exc.message.removeprefix("name: "))
                status = exc.status
            else:
                return redirect(reverse("frontend:deployment_detail", args=[deployment.name]))
        else:
            status = 400
    return render(request, "frontend/deployments/new.html", {"form": form}, status=status)


def _keys_answer(
    request: PageRequest,
    deployment: Deployment,
    *,
    status: int = 200,
    new_key: str = "",
    new_key_name: str = "",
    key_form: DeploymentKeyForm | None = None,
    error: str = "",
) -> HttpResponse:
    context = keys_context(request, deployment)
    context.update(new_key=new_key, new_key_name=new_key_name, key_error=error)
    if key_form is not None:
        context["key_form"] = key_form
    return render(request, "frontend/deployments/_keys.html", context, status=status)


@login_required
@require_POST
def deployment_key_new(request: PageRequest, name: str) -> HttpResponse:
    """Issue a key; the answer shows it once (a reload shows only its name)."""
    capability_require(request, Capability.DEPLOY, what="action")
    deployment = _deployment(name)
    form = DeploymentKeyForm(request.POST)
    if not form.is_valid():
        return _keys_answer(request, deployment, status=400, key_form=form)
    try:
        record, key = services.deployment_key_create(
            deployment=deployment, name=form.cleaned_data["name"], actor=request.user
        )
    except DomainError as exc:
        return _keys_answer(request, deployment, status=exc.status, error=exc.message)
    response = _keys_answer(request, deployment, new_key=key, new_key_name=record.name)
    # The page holding a secret must not be kept by a shared or back-button cache.
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def deployment_key_revoke(request: PageRequest, name: str, key_id: int) -> HttpResponse:
    capability_require(request, Capability.DEPLOY, what="action")
    deployment = _deployment(name)
    try:
        services.deployment_key_revoke(
            deployment=deployment,
            key_id=key_id,
            actor=request.user,
            reason=request.POST.get("reason", "").strip()[:1000] or "revoked from the UI",
        )
    except DomainError as exc:
        return _keys_answer(request, deployment, status=exc.status, error=exc.message)
    return _keys_answer(request, deployment)


def _try_answer(
    request: PageRequest, context: dict[str, Any], *, status: int = 200
) -> HttpResponse:
    return render(request, "frontend/deployments/_try_result.html", context, status=status)


def _rows_from(text: str) -> list[Any]:
    if len(text.encode()) > TRY_MAX_BYTES:
        raise ValueError(f"The input is over {TRY_MAX_BYTES // 1024} KB: use the gateway.")
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"Not valid JSON (line {exc.lineno}, column {exc.colno}).") from exc
    rows = parsed if isinstance(parsed, list) else [parsed]
    if not rows or not all(isinstance(row, (dict, list)) for row in rows):
        raise ValueError("Give one row as an object keyed by feature name, or a list of such rows.")
    if len(rows) > TRY_MAX_ROWS:
        raise ValueError(f"At most {TRY_MAX_ROWS} rows here; send more through the gateway.")
    return rows


@login_required
@require_POST
def deployment_try(request: PageRequest, name: str) -> HttpResponse:
    """Send the typed rows to the live slot and show its answer (see the module docstring)."""
    capability_require(request, Capability.DEPLOY, what="action")
    deployment = _deployment(name)
    slot = _live_slot(deployment)
    if slot is None or slot.version is None or slot.state != SlotState.READY or not slot.url:
        return _try_answer(
            request,
            {"error": f"{deployment.name} has no live slot serving yet: roll a version out first."},
            status=409,
        )
    try:
        rows = _rows_from(request.POST.get("rows", ""))
    except ValueError as exc:
        return _try_answer(request, {"error": str(exc)}, status=400)
    try:
        with httpx.Client(timeout=TRY_TIMEOUT_SECONDS) as http:
            answer = http.post(f"{slot.url}/predict", json={"instances": rows})
    except httpx.HTTPError as exc:
        return _try_answer(
            request,
            {"error": f"The live slot (v{slot.version.number}) did not answer: {exc}."},
            status=502,
        )
    try:
        body: Any = answer.json()
    except ValueError:
        body = answer.text[:2000]
    context = {
        "version": slot.version,
        "upstream_status": answer.status_code,
        "answer": json.dumps(body, indent=2) if not isinstance(body, str) else body,
        "ok": answer.is_success,
    }
    # The model's refusal (bad feature, wrong type) is the person's input error: a 400 here,
    # with the model's own message; anything else from the slot is a bad gateway.
    if answer.is_success:
        return _try_answer(request, context)
    return _try_answer(request, context, status=400 if answer.status_code < 500 else 502)
