"""What a generated service does around its model: one success body, one error body.

BentoML answers requests it cannot parse with bodies of its own (pydantic's validation
list, ``[{"error": ...}]`` for BadInput, a bare 500 text); ``ErrorBodyMiddleware`` rewrites
every such answer of a model endpoint into the one error body, so a client sees the same
shape whatever the framework or the failure. Pure ASGI, standard library only.
"""

from __future__ import annotations

import json
from typing import Any

from .contract import ContractError, Predictor, error_body

PREDICT_PATH = "/predict"


def answer(
    predictor: Predictor, instances: Any, probabilities: Any, model_version: int, ctx: Any
) -> dict[str, Any]:
    """The body of a /predict request; errors become the one error body with a 4xx."""
    try:
        if not isinstance(probabilities, bool):
            raise ContractError(
                "invalid_request", "'probabilities' must be true or false", field="probabilities"
            )
        return predictor.respond(instances, probabilities, model_version)
    except ContractError as exc:
        ctx.response.status_code = 400
        return exc.body()
    except (ValueError, TypeError) as exc:
        # The model refused values the contract let through (e.g. an unknown category).
        ctx.response.status_code = 400
        text = str(exc).strip().splitlines()
        return error_body(
            "model_rejected_input",
            f"the model cannot predict on these rows: {text[0] if text else type(exc).__name__}",
            {"exception": type(exc).__name__},
        )
    except Exception as exc:
        if type(exc).__module__.startswith("onnxruntime"):  # its shape/type errors
            ctx.response.status_code = 400
            return error_body(
                "model_rejected_input", f"the model cannot predict on these rows: {exc}", {}
            )
        raise


class ErrorBodyMiddleware:
    """Rewrite any error answer of a model endpoint that is not the one error body."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("path") != PREDICT_PATH:
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                if message["status"] < 400:
                    held["pass"] = True
                    await send(message)
                else:
                    held["start"] = message
                return
            if held.get("pass") or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                await _send_error(send, held["start"], b"".join(chunks))

        await self.app(scope, receive, capture)


async def _send_error(send: Any, start: dict[str, Any], raw: bytes) -> None:
    status = int(start["status"])
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not (isinstance(body, dict) and isinstance(body.get("error"), dict)):
        body = _rewrite(status, body, raw)
        if status >= 500:
            status = 500
        elif status not in (400, 401, 403, 404, 405, 413, 415, 422, 429):
            status = 400
    payload = json.dumps(body).encode()
    headers = [
        (k, v)
        for k, v in start.get("headers", [])
        if k.lower() not in (b"content-length", b"content-type")
    ]
    headers += [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _rewrite(status: int, body: Any, raw: bytes) -> dict[str, Any]:
    if status >= 500:
        return error_body("internal", "the model service failed on this request", {})
    if isinstance(body, dict) and isinstance(body.get("detail"), list):  # pydantic
        problems = [
            {"field": ".".join(str(p) for p in item.get("loc", [])), "problem": item.get("msg")}
            for item in body["detail"]
            if isinstance(item, dict)
        ]
        first = problems[0] if problems else {"field": "", "problem": "invalid request"}
        return error_body(
            "invalid_request",
            f"the request body is not valid: {first['field'] or 'body'}: {first['problem']}",
            {"problems": problems},
        )
    if isinstance(body, list) and body and isinstance(body[0], dict):
        text = str(body[0].get("error", ""))
    elif isinstance(body, dict):
        text = str(body.get("error", ""))
    else:
        text = raw.decode("utf-8", "replace")[:500]
    return error_body("invalid_request", text or "the request could not be handled", {})
