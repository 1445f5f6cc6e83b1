from __future__ import annotations

import pytest

from registry.services.versions import DatasetRef, ParentRef, VersionMetadata
from tests.factories import RegisteredModelFactory
from tests.registry.helpers import upload_version

pytestmark = pytest.mark.django_db


def test_lineage_graph_has_upstream_and_downstream(scientist, sklearn_model, api_for):
    features = RegisteredModelFactory(name="features", owner=scientist)
    churn = RegisteredModelFactory(name="churn", owner=scientist)
    base = upload_version(
        features,
        scientist,
        sklearn_model,
        validate=False,
        metadata=VersionMetadata(
            datasets=[DatasetRef(uri="s3://b/raw.csv", content_hash="sha256:1")]
        ),
    )
    mid = upload_version(
        churn,
        scientist,
        sklearn_model,
        validate=False,
        metadata=VersionMetadata(
            parents=[ParentRef(model="features", version=1)],
            code_repo="git@x:ds/churn",
            code_commit="abcdef1",
            training_run_id="run-1",
        ),
    )
    upload_version(
        churn,
        scientist,
        sklearn_model,
        validate=False,
        metadata=VersionMetadata(parents=[ParentRef(model="churn", version=1)]),
    )
    graph = api_for(scientist).get("/api/v1/models/churn/versions/1/lineage/").json()
    ids = {n["id"]: n for n in graph["nodes"]}
    assert graph["root"] == f"version:{mid.pk}"
    assert {"type": "dataset", "uri": "s3://b/raw.csv"}.items() <= next(
        n for n in graph["nodes"] if n["type"] == "dataset"
    ).items()
    edges = {(e["source"], e["target"], e["relation"]) for e in graph["edges"]}
    assert (f"version:{base.pk}", f"version:{mid.pk}", "parent") in edges
    assert any(rel == "code" for _, _, rel in edges)
    assert any(rel == "training_run" for _, _, rel in edges)
    child = [n for n in ids.values() if n.get("model") == "churn" and n.get("version") == 2]
    assert child and (f"version:{mid.pk}", child[0]["id"], "parent") in edges
