"""The demo `make run` seeds: users of every role, a trained model, a live deployment."""

from __future__ import annotations

import io
import secrets
from pathlib import Path

from django.core.files.uploadedfile import SimpleUploadedFile

from accounts.choices import Role
from accounts.models import User
from accounts.services import user_create
from registry import services
from registry.choices import VersionState
from registry.models import RegisteredModel
from registry.services.versions import DatasetRef, VersionMetadata

DEMO_USERS = [
    ("admin", Role.ADMIN),
    ("dana", Role.DATA_SCIENTIST),
    ("rory", Role.REVIEWER),
    ("olive", Role.OPERATOR),
    ("victor", Role.VIEWER),
]
FEATURES = ["tenure_months", "monthly_charges", "support_calls", "contract_years"]


def _train_churn_model(seed: int):
    import joblib
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "tenure_months": rng.integers(1, 72, 2000).astype(float),
            "monthly_charges": rng.normal(70, 20, 2000),
            "support_calls": rng.poisson(2, 2000).astype(float),
            "contract_years": rng.choice([0.0, 1.0, 2.0], 2000),
        }
    )
    logits = -0.04 * frame.tenure_months + 0.03 * frame.monthly_charges + 0.4 * frame.support_calls
    target = (logits + rng.normal(0, 1, 2000) > logits.mean()).astype(int)
    model = LogisticRegression(max_iter=500).fit(frame, target)
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    reference = frame.sample(500, random_state=seed).to_csv(index=False).encode()
    return buffer.getvalue(), reference, float(model.score(frame, target))


def demo_users_ensure(logins_path: Path) -> list[tuple[str, str, str]]:
    """Create (or re-password) the demo users; passwords are generated, never defaults."""
    logins = []
    for username, role in DEMO_USERS:
        password = secrets.token_urlsafe(12)
        user = User.objects.filter(username=username).first()
        if user is None:
            user = user_create(username=username, role=role, password=password)
        else:
            user.set_password(password)
            user.save(update_fields=["password"])
        logins.append((username, role, password))
    logins_path.parent.mkdir(parents=True, exist_ok=True)
    logins_path.write_text("".join(f"{u:8} {r:15} {p}\n" for u, r, p in logins))
    logins_path.chmod(0o600)
    return logins


def demo_model_ensure() -> RegisteredModel:
    """A churn model with two versions: v1 approved and aliased champion, v2 in review."""
    model = RegisteredModel.objects.filter(name="churn").first()
    if model is not None:
        return model
    dana = User.objects.get(username="dana")
    rory = User.objects.get(username="rory")
    model = services.model_create(
        name="churn",
        owner=dana,
        description="Predicts which customers cancel next month.",
        team="growth",
        tags=["demo", "tabular"],
        intended_use="Retention campaigns.",
        limitations="Trained on synthetic data; not for pricing decisions.",
    )
    for number, seed in ((1, 7), (2, 11)):
        artifact, reference, accuracy = _train_churn_model(seed)
        version = services.version_upload(
            model=model,
            uploader=dana,
            artifact=SimpleUploadedFile("churn.joblib", artifact),
            framework="sklearn",
            metadata=VersionMetadata(
                description=f"Logistic regression, seed {seed}",
                params={"C": 1.0, "max_iter": 500, "seed": seed},
                metrics={"accuracy": round(accuracy, 4)},
                tags=["logreg"],
                datasets=[
                    DatasetRef(
                        uri=f"s3://demo-bucket/churn/train-{seed}.parquet",
                        content_hash="sha256:" + secrets.token_hex(32),
                    )
                ],
                code_repo="https://git.example.com/growth/churn",
                code_commit="a1b2c3d4e5f6",
                training_run_id=f"run-{seed}",
            ),
            reference=SimpleUploadedFile("reference.csv", reference),
        )
        version = services.version_validate(version_id=version.pk) or version
        if version.state != VersionState.VALIDATED:
            raise RuntimeError(f"demo {version} did not validate: {version.validation_report}")
        services.version_submit_for_review(version=version, actor=dana)
        if number == 1:
            services.version_review(
                version=version,
                reviewer=rory,
                decision="approve",
                comment="Looks good on the holdout.",
            )
            services.alias_set(model=model, name="champion", version_number=1, actor=dana)
    return model


def demo_deployment_ensure(model: RegisteredModel) -> tuple[str, str | None]:
    """Deployment churn-prod serving the champion; returns (name, new key or None).

    The rollout is queued here and carried out by the worker once `make run` starts it.
    """
    from deployments import services as deployment_services
    from deployments.models import Deployment

    deployment = Deployment.objects.filter(name="churn-prod").first()
    if deployment is not None:
        return deployment.name, None
    olive = User.objects.get(username="olive")
    deployment = deployment_services.deployment_create(
        name="churn-prod",
        model=model,
        environment="production",
        actor=olive,
        bake_seconds=120,
        description="The churn model behind the retention campaigns.",
    )
    _, key = deployment_services.deployment_key_create(
        deployment=deployment, name="demo-app", actor=olive
    )
    deployment_services.rollout_start(
        deployment=deployment, version_number=1, actor=olive, reason="demo: first rollout"
    )
    return deployment.name, key
