"""The reviewed allow-list of exact globals a model file may reference, and how to resolve one.

The list is data (``allowlist.json`` beside this file), generated from real fitted models of
the pinned scikit-learn/XGBoost/LightGBM/skops versions by
``registry/validation/allowlist_generate.py`` and reviewed before it was checked in. It
holds (module, qualified name) pairs, never packages: a name re-exported inside an allowed
package (``sklearn.x.attrgetter``, ``lightgbm.basic.os``) is simply not on it.

The static scan (registry/validation/scanning.py) and the restricted unpicklers
(``loading``) both ask ``is_allowed``, so what validation passed is exactly what every
model process will resolve.
"""

from __future__ import annotations

import _compat_pickle
import functools
import importlib
import json
from pathlib import Path
from typing import Any

ALLOWLIST_FILE = Path(__file__).with_name("allowlist.json")


class GlobalRefusedError(Exception):
    """A model file names a global that is not on the allow-list."""

    def __init__(self, module: str, name: str, where: str = "") -> None:
        self.module = module
        self.name = name
        self.where = where
        at = f" at {where}" if where else ""
        super().__init__(
            f"{module}.{name}{at} is not on the allow-list of model globals "
            f"(version {allowlist_version()})"
        )


@functools.cache
def _data() -> dict[str, Any]:
    with open(ALLOWLIST_FILE, encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


@functools.cache
def allowed_globals() -> frozenset[tuple[str, str]]:
    """Every (module, qualified name) pair on the list."""
    return frozenset((module, name) for module, name in _data()["globals"])


def allowlist_version() -> int:
    version: int = _data()["version"]
    return version


def canonical_name(module: str, name: str) -> tuple[str, str]:
    """The (module, name) pickle resolves for a Python 2 era name (protocols 0-2).

    ``pickle.Unpickler.find_class`` applies these renames before importing; the walk and
    the restricted unpicklers apply them too, then judge the result.
    """
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    if module in _compat_pickle.IMPORT_MAPPING:
        return _compat_pickle.IMPORT_MAPPING[module], name
    return module, name


def is_allowed(module: str, name: str) -> bool:
    return (module, name) in allowed_globals()


def resolve_allowed(module: str, name: str, where: str = "") -> Any:
    """Import and return ``module.name`` if, and only if, the pair is on the list."""
    if not is_allowed(module, name):
        raise GlobalRefusedError(module, name, where)
    return resolve(module, name)


def resolve(module: str, name: str) -> Any:
    """``module.name`` resolved attribute by attribute, as protocol-4 pickles do.

    Only for names already judged (the generator resolves candidates to judge them).
    """
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj
