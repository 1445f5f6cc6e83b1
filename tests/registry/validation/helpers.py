"""Objects shared by the validation tests (fixtures live in conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
