"""The prediction log, labels and live quality (issue 20's storage and metrics half).

Real Redis (the monitoring suite's own server) and PostgreSQL: answers go into the stream as the
gateway writes them (gateway.prediction_log.entry_fields), the ingester moves them into the
day-partitioned table, labels arrive over the API (JSON, CSV body, CSV file), and every metric
is compared with scikit-learn's computed offline on the same (label, prediction) pairs.
"""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import redis
from django.db import connection
from sklearn import metrics

from accounts.choices import Role
from core.quality_metrics import CLASSIFICATION, quality_metrics
from gateway.prediction_log import PREDICTIONS_STREAM, entry_fields, inference_id_new, row_id
from monitoring.services import labels_ingest, partitions_drop, predictions_ingest
from monitoring.services.prediction_log import partition_name, partitions_ensure, partitions_list
from tests.factories import DeploymentFactory, ModelVersionFactory, RegisteredModelFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _empty_log(db):
    # The log is unmanaged (partitioned, raw SQL): Django's flush between tests leaves it.
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE monitoring_prediction")


def _contract(kind: str, classes: list | None = None, probabilities: bool = True) -> dict:
    output = {"kind": kind, "classes": classes, "probabilities": probabilities and bool(classes)}
    return {"features": [], "output": output}


@pytest.fixture
def classifier_deployment(db):
    model = RegisteredModelFactory(name="churn-quality")
    ModelVersionFactory(model=model, contract=_contract("label", ["no", "yes"]))
    return DeploymentFactory(name="churn-quality", model=model)


def _append(client, deployment: str, version: int, predictions, probabilities=None, **kw) -> str:
    inference_id = kw.pop("inference_id", None) or inference_id_new()
    answer = {"predictions": predictions, "model_version": version}
    if probabilities is not None:
        answer["probabilities"] = probabilities
    client.xadd(
        PREDICTIONS_STREAM,
        entry_fields(
            deployment=deployment,
            version=version,
            inference_id=inference_id,
            ts=kw.pop("ts", time.time()),
            answer=json.dumps(answer),
            **kw,
        ),
    )
    return inference_id


def _logged(deployment_id: int) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM monitoring_prediction WHERE deployment_id = %s", [deployment_id]
        )
        return cursor.fetchone()[0]


def test_answers_become_one_row_each_and_an_id_reused_keeps_the_first(
    monitoring_redis, classifier_deployment
) -> None:
    first = _append(monitoring_redis, "churn-quality", 1, ["yes", "no"], [[0.2, 0.8], [0.9, 0.1]])
    _append(monitoring_redis, "churn-quality", 1, ["no"], [[0.6, 0.4]], inference_id=first)
    _append(monitoring_redis, "ghost", 1, ["no"], None)
    monitoring_redis.xadd(PREDICTIONS_STREAM, {"deployment": "churn-quality", "id": "x"})
    monitoring_redis.xadd(
        PREDICTIONS_STREAM,
        entry_fields(
            deployment="churn-quality", version=1, inference_id="y", ts=time.time(), answer="[1]"
        ),
    )

    result = predictions_ingest(monitoring_redis, consumer="t1")

    assert result.as_dict() == {
        "entries": 5,
        "rows": 2,
        "duplicates": 1,
        "invalid": 2,
        "unknown_deployments": ["ghost"],
    }
    assert _logged(classifier_deployment.pk) == 2
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT row_id, prediction, probabilities FROM monitoring_prediction ORDER BY row_id"
        )
        rows = cursor.fetchall()
    assert [(r, json.loads(p), pr) for r, p, pr in rows] == [
        (first, "yes", [0.2, 0.8]),
        (row_id(first, 1), "no", [0.9, 0.1]),
    ]
    assert monitoring_redis.xlen(PREDICTIONS_STREAM) == 0  # acknowledged and deleted
    assert predictions_ingest(monitoring_redis, consumer="t1").entries == 0


def test_entries_a_dead_consumer_took_are_claimed_back_and_written_once(
    monitoring_redis, classifier_deployment
) -> None:
    for _ in range(3):
        _append(monitoring_redis, "churn-quality", 1, ["yes"], [[0.1, 0.9]])
    predictions_ingest(monitoring_redis, consumer="warm-up", count=1)  # creates the group
    # A consumer reads two entries and dies before writing them (no XACK).
    monitoring_redis.xreadgroup("monitoring-ingest", "dead", {PREDICTIONS_STREAM: ">"}, count=2)
    assert predictions_ingest(monitoring_redis, consumer="alive", claim_idle_ms=60_000).rows == 0
    time.sleep(0.05)
    result = predictions_ingest(monitoring_redis, consumer="alive", claim_idle_ms=10)
    assert result.rows == 2
    assert _logged(classifier_deployment.pk) == 3
    assert monitoring_redis.xpending(PREDICTIONS_STREAM, "monitoring-ingest")["pending"] == 0


def test_days_are_partitions_created_on_demand_and_dropped_whole(
    monitoring_redis, classifier_deployment
) -> None:
    old = time.time() - 3 * 86400
    _append(monitoring_redis, "churn-quality", 1, ["yes"], [[0.1, 0.9]], ts=old)
    _append(monitoring_redis, "churn-quality", 1, ["no"], [[0.9, 0.1]])
    predictions_ingest(monitoring_redis, consumer="t")
    old_day = datetime.fromtimestamp(old, UTC).date()
    assert partition_name(old_day) in partitions_list()
    assert partition_name(datetime.now(UTC).date()) in partitions_list()
    dropped = partitions_drop(older_than=datetime.now(UTC) - timedelta(days=1))
    assert partition_name(old_day) in dropped
    assert partition_name(datetime.now(UTC).date()) not in dropped
    assert _logged(classifier_deployment.pk) == 1
    assert partitions_ensure(old_day, old_day) == [partition_name(old_day)]  # back, empty


# --- labels over the API ------------------------------------------------------------------


@pytest.fixture
def labelled_api(api_for, make_user):
    return api_for(make_user(Role.DATA_SCIENTIST, "dana"))


def test_labels_by_json_csv_and_file_are_idempotent_and_report_what_they_could_not_use(
    monitoring_redis, classifier_deployment, labelled_api
) -> None:
    ids = [_append(monitoring_redis, "churn-quality", 1, ["yes"], [[0.3, 0.7]]) for _ in range(4)]
    predictions_ingest(monitoring_redis, consumer="t")
    url = "/api/v1/deployments/churn-quality/labels/"

    body = {"labels": [{"id": ids[0], "label": "yes"}, {"id": ids[1], "label": "no"}]}
    answer = labelled_api.post(url, body, format="json")
    assert answer.status_code == 200, answer.content
    assert answer.json() == {
        "received": 2,
        "created": 2,
        "updated": 0,
        "unchanged": 0,
        "unmatched": 0,
        "invalid": 0,
        "invalid_rows": [],
    }
    again = labelled_api.post(url, body, format="json").json()
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 0, 2)

    csv_text = f"id,label,at\n{ids[1]},yes,2026-12-01T10:00:00Z\n{ids[2]},no,\nnot-logged-yet,no,\n"
    answer = labelled_api.generic("POST", url, csv_text, content_type="text/csv").json()
    assert (answer["created"], answer["updated"], answer["unmatched"]) == (2, 1, 1)

    upload = io.BytesIO(f"ID,Label\n{ids[3]},yes\n,no\n{ids[3]}:x,no\n".encode())
    upload.name = "labels.csv"
    answer = labelled_api.post(url, {"file": upload}, format="multipart").json()
    assert answer["created"] == 1 and answer["invalid"] == 2
    assert {row["index"] for row in answer["invalid_rows"]} == {1, 2}


@pytest.mark.parametrize(
    ("body", "content_type", "named"),
    [
        ({"labelz": []}, "application/json", "labels"),
        ({"labels": "yes"}, "application/json", "labels"),
        ("identifier,truth\n1,yes\n", "text/csv", "id and label"),
    ],
)
def test_a_body_that_is_no_labels_is_a_400_naming_the_problem(
    monitoring_redis, classifier_deployment, labelled_api, body, content_type, named
) -> None:
    url = "/api/v1/deployments/churn-quality/labels/"
    payload = json.dumps(body) if content_type == "application/json" else body
    answer = labelled_api.generic("POST", url, payload, content_type=content_type)
    assert answer.status_code == 400, answer.content
    assert named in answer.json()["error"]["message"]


@pytest.mark.parametrize("role", [Role.VIEWER, Role.REVIEWER])
def test_posting_labels_needs_the_label_capability(
    monitoring_redis, classifier_deployment, api_for, make_user, role
) -> None:
    api = api_for(make_user(role, f"u-{role}"))
    url = "/api/v1/deployments/churn-quality/labels/"
    answer = api.post(url, {"labels": [{"id": "a1", "label": "yes"}]}, format="json")
    assert answer.status_code == 403
    assert api.get("/api/v1/deployments/churn-quality/quality/").status_code == 200


# --- quality equals scikit-learn offline ------------------------------------------------


def _traffic(client, deployment, version, truth, predicted, proba):
    pairs = []
    for label, prediction, row in zip(truth, predicted, proba, strict=True):
        pairs.append(
            (
                _append(client, deployment, version, [prediction], None if row is None else [row]),
                label,
            )
        )
    assert predictions_ingest(client, consumer="t", count=len(pairs) + 10).rows == len(pairs)
    return pairs


def test_binary_classifier_with_string_classes_matches_sklearn(
    monitoring_redis, classifier_deployment, labelled_api
) -> None:
    rng = np.random.default_rng(7)
    truth = rng.choice(["no", "yes"], size=400, p=[0.6, 0.4])
    p_yes = np.clip(np.where(truth == "yes", 0.65, 0.35) + rng.normal(0, 0.2, 400), 0.01, 0.99)
    predicted = np.where(p_yes >= 0.5, "yes", "no")
    proba = [[1 - p, p] for p in p_yes.tolist()]
    pairs = _traffic(monitoring_redis, "churn-quality", 1, truth, predicted.tolist(), proba)
    labelled = pairs[:300]  # a quarter never gets a label
    labels = [{"id": i, "label": str(label)} for i, label in labelled]
    assert (
        labelled_api.post(
            "/api/v1/deployments/churn-quality/labels/", {"labels": labels}, format="json"
        ).json()["created"]
        == 300
    )

    quality = labelled_api.get("/api/v1/deployments/churn-quality/quality/?window=1h").json()
    (version,) = quality["versions"]
    y_true, y_pred = truth[:300], predicted[:300]
    scores = p_yes[:300]
    got = version["metrics"]
    assert version["labelled"] == 300 and version["predictions"] == 400
    assert version["label_coverage"] == pytest.approx(0.75)
    assert got["accuracy"]["value"] == pytest.approx(metrics.accuracy_score(y_true, y_pred))
    low, high = got["accuracy"]["ci95"]
    assert low < got["accuracy"]["value"] < high
    assert got["f1_macro"] == pytest.approx(metrics.f1_score(y_true, y_pred, average="macro"))
    per_class = {row["class"]: row for row in got["per_class"]}
    assert per_class["yes"]["recall"] == pytest.approx(
        metrics.recall_score(y_true, y_pred, pos_label="yes")
    )
    assert per_class["no"]["precision"] == pytest.approx(
        metrics.precision_score(y_true, y_pred, pos_label="no")
    )
    assert (
        got["confusion_matrix"]
        == metrics.confusion_matrix(y_true, y_pred, labels=["no", "yes"]).tolist()
    )
    assert got["roc_auc"] == pytest.approx(metrics.roc_auc_score(y_true == "yes", scores))
    assert got["log_loss"] == pytest.approx(
        metrics.log_loss(y_true, np.c_[1 - scores, scores], labels=["no", "yes"])
    )


def test_multiclass_with_integer_classes_and_csv_labels_matches_sklearn(
    monitoring_redis, labelled_api
) -> None:
    model = RegisteredModelFactory(name="iris-quality")
    ModelVersionFactory(model=model, contract=_contract("label", [0, 1, 2]))
    DeploymentFactory(name="iris-quality", model=model)
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 3, size=300)
    predicted = np.where(rng.random(300) < 0.7, truth, rng.integers(0, 3, size=300))
    raw = rng.random((300, 3)) + np.eye(3)[predicted]
    proba = raw / raw.sum(axis=1, keepdims=True)
    pairs = _traffic(monitoring_redis, "iris-quality", 1, truth, predicted.tolist(), proba.tolist())
    # CSV labels are text: "2" must meet the class 2 (and "2.0" too).
    lines = ["id,label"] + [
        f"{i},{label}.0" if n % 2 else f"{i},{label}" for n, (i, label) in enumerate(pairs)
    ]
    answer = labelled_api.generic(
        "POST",
        "/api/v1/deployments/iris-quality/labels/",
        "\n".join(lines),
        content_type="text/csv",
    ).json()
    assert answer["created"] == 300

    got = labelled_api.get("/api/v1/deployments/iris-quality/quality/?version=1").json()
    got = got["versions"][0]
    assert got["unknown_label"] == 0
    m = got["metrics"]
    assert m["accuracy"]["value"] == pytest.approx(metrics.accuracy_score(truth, predicted))
    assert m["precision_macro"] == pytest.approx(
        metrics.precision_score(truth, predicted, average="macro")
    )
    assert m["recall_macro"] == pytest.approx(
        metrics.recall_score(truth, predicted, average="macro")
    )
    assert m["roc_auc"] == pytest.approx(metrics.roc_auc_score(truth, proba, multi_class="ovr"))
    assert m["log_loss"] == pytest.approx(metrics.log_loss(truth, proba))


def test_regressor_matches_sklearn_and_a_label_that_is_no_number_is_counted(
    monitoring_redis, labelled_api
) -> None:
    model = RegisteredModelFactory(name="price-quality")
    ModelVersionFactory(model=model, contract=_contract("value"))
    DeploymentFactory(name="price-quality", model=model)
    rng = np.random.default_rng(11)
    truth = rng.normal(100, 15, 200)
    predicted = truth + rng.normal(0, 5, 200)
    pairs = _traffic(monitoring_redis, "price-quality", 1, truth, predicted.tolist(), [None] * 200)
    labels = [{"id": i, "label": float(label)} for i, label in pairs]
    labels.append({"id": pairs[0][0] + ":7", "label": "n/a"})  # an id with no prediction
    labelled_api.post(
        "/api/v1/deployments/price-quality/labels/", {"labels": labels}, format="json"
    )

    got = labelled_api.get("/api/v1/deployments/price-quality/quality/").json()["versions"][0]
    m = got["metrics"]
    assert got["task"] == "regression" and got["labelled"] == 200
    assert m["mae"]["value"] == pytest.approx(metrics.mean_absolute_error(truth, predicted))
    assert m["rmse"] == pytest.approx(metrics.root_mean_squared_error(truth, predicted))
    assert m["r2"] == pytest.approx(metrics.r2_score(truth, predicted))


def test_labels_service_refuses_a_request_that_is_not_a_list(classifier_deployment) -> None:
    from core.errors import InvalidInput

    with pytest.raises(InvalidInput, match="list"):
        labels_ingest(deployment=classifier_deployment, labels={"id": "a"})


def test_plain_labels_take_the_whole_list_path_and_make_the_checked_paths_lines() -> None:
    from monitoring.services.quality import _copy_of_plain_labels, _lines_checked

    plain = [
        {"id": "0190a1b2c3d4e5f60718293a", "label": "yes"},
        {"id": "0190a1b2c3d4e5f60718293a:2", "label": 'say "no"\\'},  # quotes, a backslash
        {"id": "client-id.7_x", "label": ""},
        {"id": "0190a1b2c3d4e5f60718293a", "label": "no"},  # the same id again: the last wins
    ]
    lines = _lines_checked(plain)[0]
    assert list(lines) == [
        "0190a1b2c3d4e5f60718293a",
        "0190a1b2c3d4e5f60718293a:2",
        "client-id.7_x",
    ]
    assert lines["0190a1b2c3d4e5f60718293a"] == '0190a1b2c3d4e5f60718293a\t"no"\t\\N\n'
    fast = _copy_of_plain_labels(plain)
    assert fast is not None and sorted(fast[0].splitlines()) == sorted(
        "".join(lines.values()).splitlines()
    )
    assert fast[1] == 3
    unique = plain[:3]
    assert _copy_of_plain_labels(unique) == ("".join(_lines_checked(unique)[0].values()), 3)
    # Anything else is checked label by label (which names each problem).
    for other in (
        [{"id": "a1", "label": 1}],
        [{"id": "a1", "label": "x", "at": "2026-12-01T00:00:00Z"}],
        [{"id": "a1", "label": "x"}, ["a1", "x"]],
        [{"id": "a1", "lable": "x"}],
        [{"id": 7, "label": "x"}],
        [{"id": "a1\nb2", "label": "x"}],
        [{"id": "a1\n", "label": "x"}],
        [{"id": "-a1", "label": "x"}],
        [],
    ):
        assert _copy_of_plain_labels(other) is None, other


def test_an_id_with_a_newline_is_invalid_and_the_rest_is_stored(classifier_deployment) -> None:
    # "$" of a pattern matches before a final newline: "<id>\n" was taken, and its COPY line
    # broke the upload (a 500).
    result = labels_ingest(
        deployment=classifier_deployment,
        labels=[{"id": "a1\n", "label": "yes"}, {"id": "a2", "label": "no"}],
    ).as_dict()
    assert (result["created"], result["invalid"]) == (1, 1)
    assert result["invalid_rows"][0]["index"] == 0


def _staging_tables() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'label_incoming%%'")
        return cursor.fetchone()[0]


def test_an_upload_leaves_no_staging_table_and_a_failed_one_leaves_nothing(
    classifier_deployment, monkeypatch
) -> None:
    from django.db.utils import ProgrammingError

    from monitoring.models import PredictionLabel
    from monitoring.services import quality as labels_service

    labels = [{"id": f"a{i}", "label": "yes"} for i in range(5)]
    assert labels_ingest(deployment=classifier_deployment, labels=labels).created == 5
    assert _staging_tables() == 0
    # The last statement of the upload fails: the labels it had written and its staging
    # table are gone with it.
    monkeypatch.setattr(labels_service, "PREDICTIONS", "no_such_table")
    with pytest.raises(ProgrammingError):
        labels_ingest(
            deployment=classifier_deployment,
            labels=[{"id": f"b{i}", "label": "no"} for i in range(5)],
        )
    assert _staging_tables() == 0
    assert PredictionLabel.objects.filter(deployment=classifier_deployment).count() == 5


# --- the gateway's writer ---------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_gateway_logger_logs_all_up_to_its_rate_then_a_marked_sample(
    monitoring_redis, classifier_deployment, settings
) -> None:
    import asyncio
    import random

    import redis.asyncio as aioredis

    from gateway.prediction_log import PredictionLogger
    from tests.gateway.support import free_port

    clock = _Clock()
    log = PredictionLogger(
        full_per_s=10, sample_rate=0.5, buffer_size=1000, rng=random.Random(4), clock=clock
    )
    answer = b'{"predictions":["yes"],"probabilities":[[0.4,0.6]],"model_version":1}'
    kept = [log.keep("churn-quality", 1, inference_id_new(), answer) for _ in range(110)]
    assert kept[:10] == [True] * 10  # a second's worth whole
    assert 30 < sum(kept[10:]) < 70  # then about half, each marked sampled
    assert log.stats.sampled_out == 110 - sum(kept)

    async def flush(url: str) -> int:
        client = aioredis.Redis.from_url(url)
        try:
            return await log.flush(client, batch_size=16)
        finally:
            await client.aclose()

    with pytest.raises(redis.exceptions.ConnectionError):
        asyncio.run(flush(f"redis://127.0.0.1:{free_port()}/0"))
    assert log.pending == sum(kept)  # nothing lost: the batch went back in front
    assert asyncio.run(flush(settings.REDIS_URL)) == sum(kept)
    result = predictions_ingest(monitoring_redis, consumer="t")
    assert result.rows == sum(kept)
    with connection.cursor() as cursor:
        cursor.execute("SELECT sampled, count(*) FROM monitoring_prediction GROUP BY 1")
        by_flag = dict(cursor.fetchall())
    assert by_flag == {False: 10, True: sum(kept) - 10}


# --- the accuracy guard ---------------------------------------------------------------


def _labelled_traffic(client, deployment, version, *, n, accuracy, ts):
    rng = np.random.default_rng(version)
    truth = rng.choice(["no", "yes"], size=n)
    right = rng.random(n) < accuracy
    predicted = np.where(right, truth, np.where(truth == "yes", "no", "yes"))
    ids = [
        _append(client, deployment.name, version, [p], [[0.5, 0.5]], ts=ts)
        for p in predicted.tolist()
    ]
    predictions_ingest(client, consumer="t", count=n + 10)
    labels_ingest(
        deployment=deployment,
        labels=[{"id": i, "label": str(t)} for i, t in zip(ids, truth, strict=True)],
    )


@pytest.mark.parametrize(
    ("live_accuracy", "labels", "rolled_back"),
    [(0.55, 200, True), (0.88, 200, False), (0.55, 30, False)],
)
def test_the_accuracy_guard_rolls_back_a_version_whose_labels_turn_bad(
    monitoring_redis, deployment, versions, live_accuracy, labels, rolled_back
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from deployments.models import Deployment
    from monitoring.choices import GuardRule
    from monitoring.models import GuardBreach
    from monitoring.services import guards_check_deployment

    for version in versions.values():
        type(version).objects.filter(pk=version.pk).update(
            contract=_contract("label", ["no", "yes"])
        )
    Deployment.objects.filter(pk=deployment.pk).update(
        guard_policy={"max_accuracy_drop": 0.1, "min_labels": 100}
    )
    deployment.refresh_from_db()
    day_before = (timezone.now() - timedelta(days=1)).timestamp()
    _labelled_traffic(monitoring_redis, deployment, 1, n=300, accuracy=0.9, ts=day_before)
    _labelled_traffic(
        monitoring_redis, deployment, 2, n=labels, accuracy=live_accuracy, ts=time.time() - 30
    )

    breach = guards_check_deployment(deployment=deployment)

    if not rolled_back:
        assert breach is None
        return
    assert breach is not None and breach.rules == [GuardRule.ACCURACY]
    evidence = breach.evidence["accuracy"]
    assert evidence["baseline_version"] == 1 and evidence["labelled"] == labels
    assert evidence["value"] < evidence["baseline"] - 0.1
    assert breach.rollback is not None and breach.rollback.version.number == 1
    assert GuardBreach.objects.count() == 1


def test_the_accuracy_guard_takes_the_reference_labels_when_the_previous_has_none(
    monitoring_redis, deployment, versions
) -> None:
    from deployments.models import Deployment
    from monitoring.choices import GuardRule
    from monitoring.services import guards_check_deployment

    # v2's quality on its labelled reference rows, as validation stores it (the same code).
    rng = np.random.default_rng(7)
    truth = rng.choice(["no", "yes"], size=200)
    predicted = np.where(rng.random(200) < 0.9, truth, np.where(truth == "yes", "no", "yes"))
    baseline = quality_metrics(
        truth=[json.dumps(t) for t in truth],
        predictions=[json.dumps(p) for p in predicted],
        probabilities=None,
        task=CLASSIFICATION,
        classes=["no", "yes"],
    )
    for version in versions.values():
        type(version).objects.filter(pk=version.pk).update(
            contract=_contract("label", ["no", "yes"])
        )
    type(versions[2]).objects.filter(pk=versions[2].pk).update(
        baseline_quality={**baseline, "label_column": "churned", "labelled_rows": 200}
    )
    Deployment.objects.filter(pk=deployment.pk).update(
        guard_policy={"max_accuracy_drop": 0.1, "min_labels": 100}
    )
    deployment.refresh_from_db()
    # v1 answered nothing labelled: without the reference labels there is no baseline.
    _labelled_traffic(monitoring_redis, deployment, 2, n=200, accuracy=0.55, ts=time.time() - 30)

    breach = guards_check_deployment(deployment=deployment)

    assert breach is not None and breach.rules == [GuardRule.ACCURACY]
    evidence = breach.evidence["accuracy"]
    assert evidence["baseline_source"] == "reference labels"
    assert evidence["baseline"] == baseline["metrics"]["accuracy"]["value"]
    assert (evidence["baseline_version"], evidence["baseline_labelled"]) == (2, 200)
    assert evidence["value"] < evidence["baseline"] - 0.1


def test_deleting_a_deployment_deletes_its_labels(classifier_deployment) -> None:
    # The labels' table has no foreign-key constraint in the database (see PredictionLabel):
    # the cascade is Django's.
    from monitoring.models import PredictionLabel

    labels_ingest(deployment=classifier_deployment, labels=[{"id": "a1", "label": "yes"}])
    assert PredictionLabel.objects.filter(deployment=classifier_deployment).count() == 1
    classifier_deployment.delete()
    assert PredictionLabel.objects.count() == 0
