"""A deployment's monitoring policy: guard rules, drift thresholds and window, prices.

One document for people and the API, stored in two places: guard rules in
``Deployment.guard_policy`` (set with the deployment, read by ``guards``), the rest in
``MonitoringPolicy`` (read by drift and cost). An update is a JSON merge patch (RFC 7396):
a key that is given replaces the stored value, ``null`` removes the override (back to the
setting's default), and guard rules and drift thresholds merge key by key.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import transaction

from accounts.models import User
from core.choices import AuditAction
from core.errors import InvalidInput
from core.services import audit_record
from deployments.models import Deployment
from monitoring import drift_stats as ds
from monitoring.models import MonitoringPolicy

# Limits of each value, checked on every write (the API and the shell alike): a guard that
# can never trip, or one that trips on nothing, is a typo, never a wish.
GUARD_RULES: dict[str, tuple[type, float | None, float | None]] = {
    "max_error_rate": (float, 0.0, 1.0),
    "max_p99_ms": (float, 0.001, 3_600_000.0),
    "max_cost_per_prediction": (float, 0.0, None),
    "min_requests": (int, 1, 1_000_000_000),
    "window_seconds": (int, 10, 7 * 86400),
    "max_accuracy_drop": (float, 0.0, 1.0),
    # In the target's own unit: any finite increase (0 = no worse at all).
    "max_mae_increase": (float, 0.0, None),
    "min_labels": (int, 1, 1_000_000_000),
    "max_missing_rate_increase": (float, 0.0, 1.0),
    "max_out_of_range_rate": (float, 0.0, 1.0),
    "max_new_category_rate": (float, 0.0, 1.0),
    "min_rows": (int, 1, 1_000_000_000),
}
GUARD_DRIFT_LEVELS = ("drift", "warn")
DRIFT_WINDOW_LIMITS = (60, 7 * 86400)
PRICE_FIELDS = ("price_cpu_hour", "price_gb_hour")
POLICY_FIELDS = ("guards", "drift_thresholds", "drift_window_seconds", *PRICE_FIELDS)
_PRICE_MAX = Decimal("999999.999999")  # max_digits=12, decimal_places=6


def _bad(field: str, message: str) -> InvalidInput:
    return InvalidInput(f"{field}: {message}", code="invalid_policy", details={"field": field})


def _number(field: str, value: Any, kind: type, low: float | None, high: float | None) -> Any:
    # bool is an int in Python; true/false for a number is a mistake in the request.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(field, f"must be a number, not {value!r}.")
    if kind is int and not float(value).is_integer():
        raise _bad(field, f"must be a whole number, not {value!r}.")
    if not math.isfinite(value):
        raise _bad(field, "must be a finite number.")
    if low is not None and value < low:
        raise _bad(field, f"must be at least {low:g}, not {value!r}.")
    if high is not None and value > high:
        raise _bad(field, f"must be at most {high:g}, not {value!r}.")
    return kind(value)


def _merge(field: str, stored: dict[str, Any], patch: Any) -> dict[str, Any]:
    if not isinstance(patch, dict):
        raise _bad(field, "must be an object (send null inside it to remove one key).")
    merged = dict(stored)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def guard_policy_clean(guards: dict[str, Any], *, prefix: str = "guard_policy") -> dict[str, Any]:
    """A guard policy checked rule by rule; InvalidInput names ``<prefix>.<rule>``. The
    monitoring policy API calls it with prefix "guards"; deployment create with the field's name."""
    return _guards_clean(guards, prefix=prefix)


def _guards_clean(guards: dict[str, Any], *, prefix: str = "guards") -> dict[str, Any]:
    clean: dict[str, Any] = {}
    for key, value in guards.items():
        field = f"{prefix}.{key}"
        if key in GUARD_RULES:
            clean[key] = _number(field, value, *GUARD_RULES[key])
        elif key == "drift":
            if value not in GUARD_DRIFT_LEVELS:
                raise _bad(field, f"must be one of {', '.join(GUARD_DRIFT_LEVELS)}, not {value!r}.")
            clean[key] = value
        elif key == "always":
            if not isinstance(value, bool):
                raise _bad(field, f"must be true or false, not {value!r}.")
            clean[key] = value
        else:
            known = ", ".join(sorted([*GUARD_RULES, "drift", "always"]))
            raise _bad(field, f"is not a guard rule; known rules: {known}.")
    return clean


def _thresholds_clean(thresholds: dict[str, Any]) -> dict[str, float]:
    clean: dict[str, float] = {}
    for key, value in thresholds.items():
        field = f"drift_thresholds.{key}"
        if key not in ds.DEFAULT_THRESHOLDS:
            known = ", ".join(sorted(ds.DEFAULT_THRESHOLDS))
            raise _bad(field, f"is not a drift threshold; known thresholds: {known}.")
        if key == "alpha":
            clean[key] = _number(field, value, float, 1e-12, 0.5)
        else:
            clean[key] = _number(field, value, float, 0.0, 10.0)
    effective = {**ds.DEFAULT_THRESHOLDS, **clean}
    for stat in ("psi", "ks", "js"):
        warn, drift = effective[f"{stat}_warn"], effective[f"{stat}_drift"]
        if warn > drift:
            raise _bad(
                f"drift_thresholds.{stat}_warn",
                f"{warn:g} is above {stat}_drift ({drift:g}); a warning must come first.",
            )
    return clean


def _price(field: str, value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _bad(field, f"must be a number, not {value!r}.")
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        raise _bad(field, f"must be a number, not {value!r}.") from None
    if not price.is_finite() or price < 0 or price > _PRICE_MAX:
        raise _bad(field, f"must be between 0 and {_PRICE_MAX}, not {value!r}.")
    if price != price.quantize(Decimal("0.000001")):
        raise _bad(field, "has more than 6 decimal places.")
    return price


def _document(deployment: Deployment, policy: MonitoringPolicy | None) -> dict[str, Any]:
    """The stored overrides (what an audit event records before and after)."""

    def money(value: Decimal | None) -> str | None:
        return None if value is None else format(value.normalize(), "f")

    return {
        "guards": dict(deployment.guard_policy or {}),
        "drift_thresholds": dict(policy.drift_thresholds or {}) if policy else {},
        "drift_window_seconds": policy.drift_window_seconds if policy else None,
        "price_cpu_hour": money(policy.price_cpu_hour) if policy else None,
        "price_gb_hour": money(policy.price_gb_hour) if policy else None,
    }


def monitoring_policy_document(*, deployment: Deployment) -> dict[str, Any]:
    """The deployment's stored overrides, as the API shows and takes them."""
    return _document(deployment, MonitoringPolicy.objects.filter(deployment=deployment).first())


@transaction.atomic
def monitoring_policy_update(
    *, deployment: Deployment, actor: User | None, changes: dict[str, Any], reason: str = ""
) -> dict[str, Any]:
    """Apply a merge patch to the deployment's monitoring policy; every value is checked
    before anything is written, and the change is audited with the document before/after."""
    if not isinstance(changes, dict):
        raise InvalidInput("The monitoring policy must be a JSON object.", code="invalid_policy")
    unknown = sorted(set(changes) - set(POLICY_FIELDS))
    if unknown:
        raise _bad(unknown[0], f"is not a policy field; fields: {', '.join(POLICY_FIELDS)}.")
    locked = Deployment.objects.select_for_update().get(pk=deployment.pk)
    policy = MonitoringPolicy.objects.select_for_update().filter(deployment=locked).first()
    before = _document(locked, policy)

    guards = before["guards"]
    if "guards" in changes:
        guards = _guards_clean(
            {} if changes["guards"] is None else _merge("guards", guards, changes["guards"])
        )
    thresholds = before["drift_thresholds"]
    if "drift_thresholds" in changes:
        patch = changes["drift_thresholds"]
        thresholds = _thresholds_clean(
            {} if patch is None else _merge("drift_thresholds", thresholds, patch)
        )
    window = policy.drift_window_seconds if policy else None
    if "drift_window_seconds" in changes:
        value = changes["drift_window_seconds"]
        window = (
            None
            if value is None
            else _number("drift_window_seconds", value, int, *DRIFT_WINDOW_LIMITS)
        )
    prices = {name: getattr(policy, name) if policy else None for name in PRICE_FIELDS}
    for name in PRICE_FIELDS:
        if name in changes:
            prices[name] = _price(name, changes[name])

    if guards != (locked.guard_policy or {}):
        # Guard rules are stored with the deployment (the deployment form sets them too);
        # monitoring owns what they mean, so it checks and writes them here.
        Deployment.objects.filter(pk=locked.pk).update(guard_policy=guards)
        locked.guard_policy = guards
    if policy is None:
        policy = MonitoringPolicy(deployment=locked)
    policy.drift_thresholds = thresholds
    policy.drift_window_seconds = window
    policy.price_cpu_hour = prices["price_cpu_hour"]
    policy.price_gb_hour = prices["price_gb_hour"]
    policy.save()
    after = _document(locked, policy)
    if after != before:
        audit_record(
            actor=actor,
            action=AuditAction.MONITORING_POLICY_UPDATED,
            obj=locked,
            object_repr=f"monitoring policy of {locked.name}",
            reason=reason[:500],
            before=before,
            after=after,
        )
    return after


def monitoring_policy_effective(*, deployment: Deployment) -> dict[str, Any]:
    """What monitoring will use: the overrides over the settings' defaults."""
    from django.conf import settings

    from monitoring.selectors import prices_for
    from monitoring.services.drift import _window_seconds, drift_thresholds
    from monitoring.services.guards import guard_policy

    guards = guard_policy(deployment)
    return {
        "guards": guards,
        "guards_always": bool(guards.get("always", settings.MODELYARD_GUARDS_ALWAYS)),
        "drift_thresholds": drift_thresholds(deployment),
        "drift_window_seconds": _window_seconds(deployment),
        "prices": prices_for(deployment),
    }
