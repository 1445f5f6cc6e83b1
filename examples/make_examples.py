"""Write the README's example model and its reference data (run from the repository root):

    .venv/bin/python examples/make_examples.py

Both files are checked in; this script is how they were made (fixed seed: the same
numbers every time). The model predicts churn from the demo's four features, so the
README's prediction request is the same shape as the demo's.
"""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

HERE = Path(__file__).resolve().parent
SEED = 2024


def main() -> None:
    rng = np.random.default_rng(SEED)
    n = 1000
    frame = pd.DataFrame(
        {
            "tenure_months": rng.integers(1, 72, n).astype(float),
            "monthly_charges": rng.normal(70, 20, n).round(2),
            "support_calls": rng.poisson(2, n).astype(float),
            "contract_years": rng.choice([0.0, 1.0, 2.0], n),
        }
    )
    logits = -0.05 * frame.tenure_months + 0.03 * frame.monthly_charges + 0.5 * frame.support_calls
    target = (logits + rng.normal(0, 1, n) > logits.mean()).astype(int)
    model = LogisticRegression(max_iter=500).fit(frame, target)
    joblib.dump(model, HERE / "model.joblib")
    frame.head(200).to_csv(HERE / "reference.csv", index=False)
    print(f"model.joblib: accuracy {model.score(frame, target):.3f} on its training data")


if __name__ == "__main__":
    main()
