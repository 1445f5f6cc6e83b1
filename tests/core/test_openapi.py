"""The OpenAPI schema: valid OpenAPI 3, every 4xx with the error body, the gateway's predict
API, an enum for framework, nullable fields nullable, real media types."""

from __future__ import annotations

import jsonschema
import pytest
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.validation import validate_schema

from registry.choices import Framework

pytestmark = pytest.mark.django_db
METHODS = {"get", "post", "put", "patch", "delete"}
ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}


@pytest.fixture(scope="module")
def schema(django_db_blocker):
    with django_db_blocker.unblock():
        return SchemaGenerator().get_schema(request=None, public=True)


def _operations(schema, prefix="/api/v1/"):
    for path, item in schema["paths"].items():
        if path.startswith(prefix):
            for method, operation in item.items():
                if method in METHODS:
                    yield path, method, operation


def _resolve(schema, ref: str) -> dict:
    return schema["components"]["schemas"][ref.rsplit("/", 1)[1]]


def test_the_schema_is_valid_openapi_3(schema):
    validate_schema(schema)  # drf-spectacular's own check against the OpenAPI 3.0 JSON schema
    assert schema["openapi"].startswith("3.")


def test_every_platform_operation_documents_its_4xx_with_the_error_body(schema):
    operations = list(_operations(schema))
    assert len(operations) > 40
    for path, method, operation in operations:
        responses = operation["responses"]
        for code in ("401", "403", "429"):
            assert code in responses, (method, path, code)
        if "{" in path:
            assert "404" in responses, (method, path)
        if method in {"post", "put", "patch"}:
            assert {"400", "409", "415"} <= set(responses), (method, path)
        for code, response in responses.items():
            if code.startswith("4"):
                assert response["content"]["application/json"]["schema"] == ERROR_REF, (
                    method,
                    path,
                    code,
                )
                assert response["description"], (method, path, code)
    upload = schema["paths"]["/api/v1/models/{model_name}/versions/"]["post"]["responses"]
    assert {"413", "422"} <= set(upload)
    error = _resolve(schema, ERROR_REF["$ref"])
    detail = _resolve(schema, error["properties"]["error"]["$ref"])
    assert set(detail["required"]) == {"code", "message", "details"}
    assert detail["properties"]["details"]["nullable"] is True


def test_a_real_error_answer_matches_the_documented_error_body(schema, scientist, api_for):
    error = _resolve(schema, ERROR_REF["$ref"])
    resolver_schema = {**error, "components": schema["components"]}
    for response in (
        api_for(scientist).get("/api/v1/models/nope/"),
        api_for(scientist).post("/api/v1/models/", {"name": ""}, format="json"),
        api_for(scientist).post("/api/v1/models/", "x", content_type="text/plain"),
    ):
        assert 400 <= response.status_code < 500
        jsonschema.validate(response.json(), resolver_schema)


def test_the_gateway_predict_api_is_documented(schema, settings):
    item = schema["paths"]["/d/{deployment}/predict"]["post"]
    assert item["servers"][0]["url"] == settings.MODELYARD_GATEWAY_URL
    assert {"deploymentKey", "deploymentKeyHeader"} <= set(schema["components"]["securitySchemes"])
    request = _resolve(schema, item["requestBody"]["content"]["application/json"]["schema"]["$ref"])
    assert request["required"] == ["instances"]
    rows = request["properties"]["instances"]["items"]["oneOf"]
    assert [row["type"] for row in rows] == ["object", "array"]  # keyed by name, positional
    assert request["properties"]["probabilities"]["type"] == "boolean"
    ok = item["responses"]["200"]["content"]["application/json"]["schema"]
    response = _resolve(schema, ok["$ref"])
    assert set(response["properties"]) == {
        "predictions",
        "probabilities",
        "classes",
        "model_version",
    }
    assert response["properties"]["probabilities"]["items"]["type"] == "array"
    # No 502: an unreachable model server is 503 upstream_unavailable (gateway.app).
    assert "502" not in item["responses"]
    for code in ("400", "401", "408", "413", "415", "503", "504"):
        assert item["responses"][code]["content"]["application/json"]["schema"] == ERROR_REF
    # A documented request validates against its own schema (the contract's example).
    jsonschema.validate(request["example"], {**request, "components": schema["components"]})


def test_framework_is_an_enum_and_nullable_fields_are_nullable(schema):
    components = schema["components"]["schemas"]
    assert components["FrameworkEnum"]["enum"] == list(Framework.values)
    upload = components["VersionUploadRequest"]["properties"]["framework"]
    assert upload == {"$ref": "#/components/schemas/FrameworkEnum"}
    job = components["BatchJob"]["properties"]
    for field in ("eta_seconds", "rows_per_second", "progress", "version", "total_rows"):
        assert job[field].get("nullable") is True, field


def test_media_types_are_the_real_ones(schema):
    output = schema["paths"]["/api/v1/batch-jobs/{id}/output/"]["get"]["responses"]
    assert set(output["200"]["content"]) == {"application/vnd.apache.parquet"}
    assert output["200"]["content"]["application/vnd.apache.parquet"]["schema"] == {
        "type": "string",
        "format": "binary",
    }
    assert "409" in output
    upload = schema["paths"]["/api/v1/models/{model_name}/versions/"]["post"]["requestBody"]
    assert set(upload["content"]) == {"multipart/form-data"}
