from __future__ import annotations

import json
from typing import Any

from django import template

from accounts.permissions import user_capabilities, user_has_capability
from core.choices import Capability
from registry import selectors

register = template.Library()


@register.filter
def can(user: Any, capability: str) -> bool:
    """``{% if user|can:"review" %}``: the same capability check the API makes."""
    return user_has_capability(user, capability)


@register.simple_tag
def nav_state(user: Any) -> dict[str, Any]:
    """What the navigation shows for this user: the review badge only for reviewers."""
    capabilities = user_capabilities(user)
    can_review = Capability.REVIEW in capabilities
    return {
        "can_review": can_review,
        "can_upload": Capability.UPLOAD in capabilities,
        "review_count": selectors.review_queue().count() if can_review else 0,
    }


@register.filter
def pretty_json(value: Any) -> str:
    """Indented JSON for <pre>; the template still escapes it."""
    return json.dumps(value, indent=2, sort_keys=True, default=str)


@register.filter
def get_item(mapping: Any, key: str) -> Any:
    return mapping.get(key) if isinstance(mapping, dict) else None


@register.filter
def human_bytes(size: int | None) -> str:
    if size is None:
        return "—"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


@register.filter
def state_label(state: str) -> str:
    return str(state).replace("_", " ")


# How a stored format reads in a sentence; an unknown one is shown as recorded.
_FORMAT_NAMES = {
    "pickle": "pickle file",
    "joblib": "joblib file",
    "skops": "skops file",
    "onnx": "ONNX file",
    "xgboost-json": "XGBoost JSON file",
    "xgboost-ubj": "XGBoost UBJ file",
    "lightgbm-text": "LightGBM text file",
}


@register.filter
def framework_and_format(version: Any) -> str:
    """``scikit-learn · joblib file``: the library once and the format the file really has.

    The framework's choice label names every format it accepts ("scikit-learn
    (pickle/joblib)"), which beside the detected format read twice.
    """
    library = str(version.get_framework_display()).split(" (", 1)[0]
    fmt = version.artifact_format
    if not fmt:
        return library
    return f"{library} · {_FORMAT_NAMES.get(fmt, fmt)}"
