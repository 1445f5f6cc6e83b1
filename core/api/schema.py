"""The OpenAPI schema's house rules, applied once for every operation (drf-spectacular).

- Every operation lists the 4xx it can answer, each with the one error body
  ``{"error": {"code", "message", "details"}}`` (``ErrorResponse``): 401 and 429 (token auth
  and its failure throttle) and 403 (roles) everywhere; 404 where the path names an object;
  400 and 409 for writes (validation, state machine) and for filtered reads; 415 where a
  request body is parsed; 413 and 422 for multipart uploads (size limits, unsafe artifacts).
  And 503 everywhere: a dependency (database, Redis, storage) failed; ``Retry-After`` says
  when to try again (core.infrastructure).
- The prediction gateway's API (``POST {gateway}/d/{deployment}/predict``) is documented
  beside the platform's, with its own server and its deployment-key security schemes; the
  request, response and error shapes are the ones agreed with the model contract.
"""

from __future__ import annotations

from typing import Any, Literal

from django.conf import settings
from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers

from gateway.routes import DEPLOYMENT_NAME_RE

STATUS_TEXT = {
    "400": "Invalid input (the message names the field)",
    "401": "Not authenticated: send 'Authorization: Token <key>'",
    "403": "Your role (or the token's scopes) does not allow this",
    "404": "No such object",
    "409": "Conflict: the object's state does not allow this, or the name is taken",
    "413": "Request body over the size limit",
    "415": "Unsupported media type (send JSON, or multipart/form-data where documented)",
    "422": "Unsafe or unloadable artifact",
    "429": "Too many failed token authentications from this client: retry later",
    "503": "A dependency (database, Redis, artifact storage) is unavailable: "
    "retry after the Retry-After header's seconds",
}
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="machine-readable, e.g. 'invalid', 'not_found'")
    message = serializers.CharField(help_text="for people; names the field or object")
    details = serializers.JSONField(
        allow_null=True, help_text="structured context (field, row, limits) or null"
    )


class ErrorResponseSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


class ModelyardAutoSchema(AutoSchema):
    def _error_codes(self) -> list[str]:
        codes = ["401", "403", "429", "503"]
        if "{" in self.path:
            codes.append("404")
        if self.method in WRITE_METHODS:
            codes += ["400", "409"]
            if self.method != "DELETE":
                codes.append("415")
                request = self.get_request_serializer()
                if isinstance(request, dict) and "multipart/form-data" in request:
                    codes += ["413", "422"]
        elif self._get_filter_parameters() or self._get_pagination_parameters():
            codes.append("400")
        return sorted(set(codes))

    def _get_response_bodies(
        self, direction: Literal["request", "response"] = "response"
    ) -> dict[str, Any]:
        responses = super()._get_response_bodies(direction=direction)
        for code in self._error_codes():
            if code not in responses:
                response = self._get_response_for_code(
                    ErrorResponseSerializer, code, media_types=["application/json"]
                )
                response["description"] = STATUS_TEXT[code]
                if code == "503":
                    response["headers"] = {
                        "Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}
                    }
                responses[code] = response
        return dict(sorted(responses.items()))


# --- the gateway's prediction API -----------------------------------------------------------

_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
_SCALAR = {
    "oneOf": [{"type": "number"}, {"type": "string"}, {"type": "boolean"}],
    "nullable": True,
    "description": "a feature value; null for a missing value where the model accepts one",
}
PREDICT_REQUEST = {
    "type": "object",
    "required": ["instances"],
    "properties": {
        "instances": {
            "type": "array",
            "minItems": 1,
            "description": "Rows to predict: objects keyed by feature name (any model), or "
            "positional lists in the version's feature order.",
            "items": {
                "oneOf": [
                    {
                        "type": "object",
                        "additionalProperties": _SCALAR,
                        "description": "a row keyed by feature name",
                    },
                    {
                        "type": "array",
                        "items": _SCALAR,
                        "description": "a row as values in feature order",
                    },
                ]
            },
        },
        "probabilities": {
            "type": "boolean",
            "default": True,
            "description": "also return class probabilities (classifiers only)",
        },
    },
    "example": {"instances": [{"tenure": 12, "plan": "basic"}], "probabilities": True},
}
PREDICT_RESPONSE = {
    "type": "object",
    "required": ["predictions", "model_version"],
    "properties": {
        "predictions": {
            "type": "array",
            "items": {},
            "description": "one prediction per row: the model's original label, or a value",
        },
        "probabilities": {
            "type": "array",
            "items": {"type": "array", "items": {"type": "number"}},
            "description": "per row, one probability per class in the order of `classes`; "
            "only for classifiers when asked for",
        },
        "classes": {
            "type": "array",
            "items": {},
            "description": "the class labels the probabilities are in the order of",
        },
        "model_version": {"type": "integer", "description": "the version that answered"},
    },
}
PREDICT_ERRORS = {
    "400": "Invalid body (not JSON, not an object, nested too deep, a NUL character) or rows "
    "the model refuses; `details` names the row and feature",
    "401": "Missing or invalid deployment key (unknown deployments answer the same)",
    "405": "Predictions are POST",
    "408": "The request's headers or body did not arrive in time",
    "413": "Request body over the gateway's limit",
    "415": "Content-Type is not JSON",
    "422": "Rows the model server refuses (wrong feature, wrong type); `details` names them",
    "500": "A gateway bug (logged)",
    "503": "Retry after `Retry-After`: the deployment has no live slot "
    "(`deployment_unavailable`), no replica of it can be reached right now "
    "(`upstream_unavailable`; the gateway tried each and asked for their repair), the gateway "
    "is starting and has not loaded its routes (`routes_not_loaded`), or it holds too many "
    "connections",
    "504": "The model server did not answer in time",
}


def gateway_paths_add(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: add the gateway's predict API to the schema."""
    components = result.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["PredictRequest"] = PREDICT_REQUEST
    schemas["PredictResponse"] = PREDICT_RESPONSE
    schemes = components.setdefault("securitySchemes", {})
    schemes["deploymentKey"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "a deployment key: 'Authorization: Bearer <key>'",
    }
    schemes["deploymentKeyHeader"] = {"type": "apiKey", "in": "header", "name": "X-Modelyard-Key"}
    headers = {
        "X-Modelyard-Deployment": {"schema": {"type": "string"}},
        "X-Modelyard-Version": {"schema": {"type": "integer"}},
    }
    responses: dict[str, Any] = {
        "200": {
            "description": "Predictions of the deployment's live version",
            "headers": headers,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/PredictResponse"}}
            },
        }
    }
    for code, text in PREDICT_ERRORS.items():
        responses[code] = {
            "description": text,
            "content": {"application/json": {"schema": _ERROR_REF}},
        }
    result.setdefault("paths", {})["/d/{deployment}/predict"] = {
        "post": {
            "operationId": "gateway_predict",
            "servers": [
                {"url": settings.MODELYARD_GATEWAY_URL, "description": "the prediction gateway"}
            ],
            "summary": "Predict with a deployment's live version",
            "tags": ["gateway"],
            "parameters": [
                {
                    "in": "path",
                    "name": "deployment",
                    "required": True,
                    "schema": {"type": "string", "pattern": DEPLOYMENT_NAME_RE.pattern},
                }
            ],
            "security": [{"deploymentKey": []}, {"deploymentKeyHeader": []}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}
                },
            },
            "responses": responses,
        },
    }
    return result
