"""Objects shared by the validation tests (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from registry.validation import sandbox
from tests.registry.validation import probes

FEATURES = ["age", "income", "tenure", "score"]


@dataclass
class Artifact:
    path: Path
    framework: str
    fmt: str
    model: Any  # the in-memory model, to compare sandbox predictions with


class Evil:
    """Pickles as a call of ``func(*args)``; unpickling it runs that call."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


class CustomEstimator:
    """A model class outside every allow-list (it lives in the test suite)."""

    def __init__(self) -> None:
        self.coef_ = np.ones(4)

    def predict(self, X: Any) -> Any:
        return np.asarray(X) @ self.coef_


# The copy of modelkit ``probe_modelkit`` makes ships probes.py under this name.
PROBES_MODULE = "modelkit._probes"


def probe_modelkit(folder: Path) -> Path:
    """A copy of registry/modelkit in ``folder`` whose allow-list has a hole: it also admits
    the test payloads of ``probes`` (as ``modelkit._probes``), so that a pickle calling one
    really runs in the validation child. Everything else, the version included, is the
    real list, so the parent's loading decision stays valid for it.

    Made readable by everyone (0755/0644): the child runs as the model user.
    """
    target = Path(folder) / "modelkit"
    shutil.copytree(sandbox.MODELKIT_DIR, target, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(probes.__file__, target / "_probes.py")
    allowlist = target / "allowlist.json"
    data = json.loads(allowlist.read_text())
    data["globals"].extend([PROBES_MODULE, name] for name in probes.NAMES)
    allowlist.write_text(json.dumps(data))
    for path in [Path(folder), *Path(folder).rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


def probe_pickle(probe: str, *args: Any) -> bytes:
    """A protocol-2 pickle that calls ``modelkit._probes.<probe>(*args)`` when loaded.

    Written opcode by opcode: the name only resolves inside the child, so the pickler here
    could not look it up. GLOBAL, the pickled argument tuple, REDUCE, STOP.
    """
    if probe not in probes.NAMES:
        raise ValueError(f"no probe {probe!r}")
    arguments = pickle.dumps(tuple(args), protocol=2)[2:-1]  # without PROTO and STOP
    return b"\x80\x02c" + f"{PROBES_MODULE}\n{probe}\n".encode() + arguments + b"R."
