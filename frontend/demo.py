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


KEY_LINE = "gateway key for "


def demo_users_ensure(logins_path: Path) -> list[tuple[str, str, str]]:
    """Create (or re-password) the demo users; passwords are generated, never defaults.

    The file is rewritten with the new passwords; its gateway key lines are kept (a key's
    value exists nowhere else, see ``demo_key_ensure``)."""
    logins: list[tuple[str, str, str]] = []
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
    kept = [line + "\n" for line in _read_lines(logins_path) if line.startswith(KEY_LINE)]
    logins_path.write_text("".join([*(f"{u:8} {r:15} {p}\n" for u, r, p in logins), *kept]))
    logins_path.chmod(0o600)
    return logins


def _read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def demo_key_ensure(*, deployment_name: str, logins_path: Path) -> tuple[str, bool]:
    """The demo's gateway key for ``deployment_name``: the one in ``logins_path`` while it is
    still a live key of that deployment, else a new one issued and written there.

    Returns (key, issued). Only the key's digest is stored, so the file is the one place
    its value survives a restart.
    """
    from deployments import services as deployment_services
    from deployments.models import Deployment, DeploymentKey
    from gateway.routes import deployment_key_hash

    prefix = f"{KEY_LINE}{deployment_name}: "
    lines = _read_lines(logins_path)
    for line in lines:
        if line.startswith(prefix):
            key = line[len(prefix) :].strip()
            live = DeploymentKey.objects.filter(
                deployment__name=deployment_name,
                digest=deployment_key_hash(key),
                revoked_at__isnull=True,
            )
            if live.exists():
                return key, False
    deployment = Deployment.objects.get(name=deployment_name)
    _, key = deployment_services.deployment_key_create(
        deployment=deployment, name="demo-app", actor=User.objects.get(username="olive")
    )
    kept = [line for line in lines if not line.startswith(prefix)]
    logins_path.write_text("".join(line + "\n" for line in [*kept, prefix + key]))
    logins_path.chmod(0o600)
    return key, True


def demo_model_ensure() -> RegisteredModel:
    """A churn model: v1 approved and aliased champion, v2 approved (an operator can roll it
    out and back from the deployment page), v3 waiting in the review queue."""
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
    for number, seed in ((1, 7), (2, 11), (3, 13)):
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
        if number in (1, 2):
            services.version_review(
                version=version,
                reviewer=rory,
                decision="approve",
                comment="Looks good on the holdout.",
            )
        if number == 1:
            # A protected alias is the reviewer's (or operator's) to move, not the uploader's.
            services.alias_set(model=model, name="champion", version_number=1, actor=rory)
    return model


def demo_deployment_ensure(model: RegisteredModel) -> tuple[str, bool]:
    """Deployment churn-prod serving the champion; returns (name, created now).

    The rollout is queued here and carried out by the worker once `make run` starts it; its
    gateway key comes from ``demo_key_ensure``.
    """
    from deployments import services as deployment_services
    from deployments.models import Deployment

    deployment = Deployment.objects.filter(name="churn-prod").first()
    if deployment is not None:
        return deployment.name, False
    olive = User.objects.get(username="olive")
    deployment = deployment_services.deployment_create(
        name="churn-prod",
        model=model,
        environment="production",
        actor=olive,
        bake_seconds=120,
        description="The churn model behind the retention campaigns.",
    )
    deployment_services.rollout_start(
        deployment=deployment, version_number=1, actor=olive, reason="demo: first rollout"
    )
    return deployment.name, True


# --- a history for the dashboard --------------------------------------------------------------
# Synthetic, and said so when seeded: three days in which v1 served, v2 was rolled out a day
# ago, drifted and was rolled back six hours ago. Real gateway traffic adds to it from then on.


def _phases(end):
    from datetime import timedelta

    return [
        (end - timedelta(days=3), end - timedelta(days=1), 1, "blue"),
        (end - timedelta(days=1), end - timedelta(hours=6), 2, "green"),
        (end - timedelta(hours=6), end, 1, "blue"),
    ]


def _psi_status(value: float) -> str:
    """A feature's status from its PSI, by the thresholds the demo windows record."""
    return "drift" if value >= 0.25 else "warn" if value >= 0.1 else "ok"


def demo_history_ensure(*, deployment_name: str = "churn-prod") -> dict[str, int]:
    """Minute roll-ups, hourly drift windows and slot resource samples of the last 3 days
    (only when the deployment has no roll-ups yet: running the seed again adds nothing)."""
    from datetime import timedelta

    import numpy as np
    from django.utils import timezone

    from deployments.models import Deployment
    from gateway.metrics import BUCKET_BOUNDS_MS, BUCKET_COUNT
    from monitoring.models import DriftFeature, DriftWindow, MetricRollup, SlotResourceSample

    deployment = Deployment.objects.get(name=deployment_name)
    if MetricRollup.objects.filter(deployment=deployment).exists():
        return {"rollups": 0, "drift_windows": 0, "resource_samples": 0}
    rng = np.random.default_rng(42)
    # Ten minutes back: the minutes real traffic is about to fill stay untouched.
    end = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=10)
    bounds = np.asarray(BUCKET_BOUNDS_MS)
    rollups, samples, windows = [], [], []
    cpu = {"blue": 0.0, "green": 0.0}
    for start, stop, version, slot in _phases(end):
        minute = start
        median_ms, error_rate = (12.0, 0.003) if version == 1 else (17.0, 0.015)
        while minute < stop:
            hour = minute.hour + minute.minute / 60
            rate = 40 + 25 * np.sin((hour - 9) / 24 * 2 * np.pi)  # busier by day
            requests = int(rng.poisson(max(rate, 5)))
            errors = int(rng.binomial(requests, error_rate))
            latencies = rng.lognormal(np.log(median_ms), 0.45, requests)
            histogram = np.bincount(
                np.searchsorted(bounds, latencies, side="left"), minlength=BUCKET_COUNT
            )
            ok = requests - errors
            ok_hist = histogram.copy()
            # The errors are the fastest answers (a failing model fails fast).
            taken = 0
            error_hist = np.zeros(BUCKET_COUNT, dtype=np.int64)
            for index in np.flatnonzero(ok_hist):
                take = min(int(ok_hist[index]), errors - taken)
                ok_hist[index] -= take
                error_hist[index] += take
                taken += take
                if taken == errors:
                    break
            rows = int(ok * 1.6)
            for status, count, nrows, hist in (
                (200, ok, rows, ok_hist),
                (500, errors, errors, error_hist),
            ):
                if count:
                    rollups.append(
                        MetricRollup(
                            deployment=deployment,
                            version=version,
                            status=status,
                            start=minute,
                            count=count,
                            rows=nrows,
                            errors=count if status >= 500 else 0,
                            latency_us_sum=int(latencies.mean() * 1000 * count),
                            histogram=hist.tolist(),
                        )
                    )
            if minute.minute % 5 == 0:
                cpu[slot] += requests * 5 * 0.004 + 1.5  # per-request work + idle upkeep
                samples.append(
                    SlotResourceSample(
                        deployment=deployment,
                        slot=slot,
                        version=version,
                        cpu_seconds=cpu[slot],
                        rss_bytes=int((310 if version == 1 else 420) * 1e6),
                        process_count=3,
                        taken_at=minute,
                    )
                )
            minute += timedelta(minutes=1)
        hour_start = start
        while hour_start + timedelta(hours=1) <= stop:
            since_switch = (hour_start - start).total_seconds() / 3600
            windows.append((version, hour_start, since_switch))
            hour_start += timedelta(hours=1)
    MetricRollup.objects.bulk_create(rollups, batch_size=2000)
    SlotResourceSample.objects.bulk_create(samples, batch_size=2000)
    features = ["tenure_months", "monthly_charges", "support_calls", "contract_years"]
    created = 0
    for version, hour_start, since_switch in windows:
        psi = {name: float(rng.uniform(0.005, 0.05)) for name in features}
        if version == 2:
            # v2's traffic shifted: support calls drift after a few hours, charges warn.
            psi["monthly_charges"] = float(rng.uniform(0.11, 0.2))
            if since_switch > 4:
                psi["support_calls"] = float(rng.uniform(0.26, 0.4))

        statuses = {name: _psi_status(value) for name, value in psi.items()}
        order = ["ok", "warn", "drift"]
        window = DriftWindow.objects.create(
            deployment=deployment,
            version=version,
            kind="scheduled",
            start=hour_start,
            end=hour_start + timedelta(hours=1),
            live_rows=int(rng.integers(150, 400)),
            status=max(statuses.values(), key=order.index),
            thresholds={"psi_warn": 0.1, "psi_drift": 0.25},
        )
        DriftFeature.objects.bulk_create(
            DriftFeature(
                window=window,
                feature=name,
                kind="numeric",
                status=statuses[name],
                live_rows=window.live_rows,
                missing_rate=0.0,
                psi=psi[name],
                ks=psi[name] / 2,
                ks_pvalue=0.5 if statuses[name] == "ok" else 0.001,
            )
            for name in features
        )
        created += 1
    return {"rollups": len(rollups), "drift_windows": created, "resource_samples": len(samples)}


def demo_batch_ensure(model: RegisteredModel) -> int | None:
    """A batch job over 1,000 customers with the champion; the worker runs it once `make run`
    has started it (returns the new job's id, or None when the demo has one already)."""
    import numpy as np
    import pandas as pd

    from batch import services as batch_services
    from batch.models import BatchJob

    if BatchJob.objects.filter(model=model).exists():
        return None
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "customer_id": [f"c-{i:05d}" for i in range(1000)],
            "tenure_months": rng.integers(1, 72, 1000).astype(float),
            "monthly_charges": rng.normal(70, 20, 1000),
            "support_calls": rng.poisson(2, 1000).astype(float),
            "contract_years": rng.choice([0.0, 1.0, 2.0], 1000),
        }
    )
    job = batch_services.batch_job_create(
        model=model,
        actor=User.objects.get(username="dana"),
        alias="champion",
        upload=SimpleUploadedFile("customers.csv", frame.to_csv(index=False).encode()),
        id_column="customer_id",
        probabilities=True,
    )
    return job.pk
