"""Small real models and data for tests: trained here, never downloaded."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd

FEATURES = ["age", "income", "visits", "score"]


def training_frame(n: int = 400, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.normal(40, 10, n),
            "income": rng.normal(50_000, 15_000, n),
            "visits": rng.poisson(3, n).astype(float),
            "score": rng.uniform(0, 1, n),
        }
    )
    target = ((frame["age"] - 40) / 10 + frame["score"] * 2 + rng.normal(0, 0.5, n) > 1).astype(int)
    return frame, target.to_numpy()


@dataclass(frozen=True)
class TrainedModel:
    artifact: bytes
    reference_csv: bytes
    frame: pd.DataFrame
    model: object


def train_sklearn_joblib(seed: int = 0, estimator=None) -> TrainedModel:
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame, target = training_frame(seed=seed)
    estimator = estimator if estimator is not None else LogisticRegression(max_iter=200)
    model = make_pipeline(StandardScaler(), estimator).fit(frame, target)
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    return TrainedModel(
        buffer.getvalue(), frame.head(200).to_csv(index=False).encode(), frame, model
    )


class Malicious:
    """Pickles to os.system('...') — the classic model-file code execution."""

    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /tmp/modelyard-pwned",))
