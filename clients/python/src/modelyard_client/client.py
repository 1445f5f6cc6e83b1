"""A small typed client for the Modelyard REST API, and the waits a CI pipeline needs.

Every non-2xx answer becomes an ``ApiError`` carrying the server's one error body
(``{"error": {"code", "message", "details"}}``); a network failure becomes one too (status
0), so callers handle one exception type and can always print ``error.message``.
"""

from __future__ import annotations

import enum
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

DEFAULT_TIMEOUT = 60.0
# Version states at or past each target; the states that mean the target is never reached.
VERSION_TARGETS: dict[str, frozenset[str]] = {
    "validated": frozenset({"validated", "in_review", "approved"}),
    "approved": frozenset({"approved"}),
}
VERSION_DEAD_ENDS = frozenset({"invalid", "rejected", "archived"})
ROLLOUT_REACHED = frozenset({"baking", "live"})  # traffic is on the new version
ROLLOUT_FAILED = frozenset({"failed", "rolled_back", "superseded"})
BATCH_REACHED = frozenset({"succeeded"})
BATCH_FAILED = frozenset({"failed", "cancelled"})
_REF = re.compile(r"^(?P<model>[A-Za-z0-9][A-Za-z0-9._-]{0,99})[:@/](?P<number>[0-9]+)$")


class ApiError(Exception):
    """A refused or failed request: the server's status, code, message and details."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details

    @property
    def is_auth(self) -> bool:
        """Not authenticated (401) or not allowed (403)."""
        return self.status in (401, 403)

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            body = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return cls(
                response.status_code,
                str(error.get("code") or "error"),
                error["message"],
                error.get("details"),
            )
        # Not the platform's body (a proxy's page, a crashed server): say what came back.
        text = " ".join(response.text.split())[:200] or response.reason_phrase
        return cls(response.status_code, "http_error", f"HTTP {response.status_code}: {text}")


@dataclass(frozen=True)
class VersionRef:
    """``model:number`` (``model@number`` and ``model/number`` are accepted too)."""

    model: str
    number: int

    @classmethod
    def parse(cls, text: str, model: str | None = None) -> VersionRef:
        match = _REF.match(text.strip())
        if match:
            return cls(match["model"], int(match["number"]))
        if text.strip().isdigit() and model:
            return cls(model, int(text))
        raise ValueError(
            f"{text!r} is not a version: write MODEL:NUMBER (e.g. fraud:3), "
            "or the number with --model."
        )

    def __str__(self) -> str:
        return f"{self.model}:{self.number}"


class WaitOutcome(enum.Enum):
    REACHED = "reached"
    FAILED = "failed"  # a state from which the target can never be reached
    TIMEOUT = "timeout"


@dataclass
class WaitResult:
    outcome: WaitOutcome
    body: dict[str, Any]
    message: str
    seconds: float = 0.0
    seen: list[str] = field(default_factory=list)


Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


class Client:
    """The REST API under ``{url}/api/v1/`` with ``Authorization: Token {token}``."""

    def __init__(
        self,
        url: str,
        token: str = "",
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        if not url:
            raise ValueError("No server URL: set MODELYARD_URL (e.g. http://127.0.0.1:8000).")
        # Refused here, as a ValueError the CLI prints: httpx would raise InvalidURL (no
        # ValueError) on a bad port or character, or "unsupported protocol" on a missing scheme.
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise ValueError(f"The server URL {url!r} is not a URL: {exc}.") from exc
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(
                f"The server URL {url!r} is not an http(s) URL (e.g. http://127.0.0.1:8000)."
            )
        headers = {"Accept": "application/json", "User-Agent": "modelyard-client/0.1"}
        if token:
            headers["Authorization"] = f"Token {token}"
        self.url = url.rstrip("/")
        self.poll_interval = poll_interval
        self._http = httpx.Client(
            base_url=self.url + "/api/v1/", headers=headers, timeout=timeout, transport=transport
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> Client:
        """Configured by MODELYARD_URL and MODELYARD_TOKEN."""
        env = os.environ if env is None else env
        return cls(env.get("MODELYARD_URL", ""), env.get("MODELYARD_TOKEN", ""), **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------------------------

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise ApiError(0, "timeout", f"{self.url} did not answer in time ({exc}).") from exc
        except httpx.TransportError as exc:
            reason = str(exc).rstrip(".") or type(exc).__name__
            raise ApiError(0, "unreachable", f"Cannot reach {self.url}: {reason}.") from exc
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._send(method, path, **kwargs)
        if response.status_code == 204 or not response.content:
            return {}
        try:
            body = response.json()
        except ValueError as exc:
            raise ApiError(
                response.status_code, "bad_response", f"{path}: the answer is not JSON."
            ) from exc
        return body if isinstance(body, dict) else {"results": body}

    def _poll(
        self,
        fetch: Callable[[], dict[str, Any]],
        classify: Callable[[dict[str, Any]], WaitOutcome | None],
        describe: Callable[[dict[str, Any]], str],
        *,
        timeout: float,
        progress: Progress,
    ) -> WaitResult:
        started = time.monotonic()
        seen: list[str] = []
        while True:
            body = fetch()
            now = describe(body)
            if not seen or seen[-1] != now:
                seen.append(now)
                progress(now)
            outcome = classify(body)
            elapsed = time.monotonic() - started
            if outcome is not None:
                return WaitResult(outcome, body, now, elapsed, seen)
            if elapsed >= timeout:
                return WaitResult(
                    WaitOutcome.TIMEOUT, body, f"still {now} after {timeout:g} s", elapsed, seen
                )
            time.sleep(min(self.poll_interval, max(0.0, timeout - elapsed)))

    # --- registry ---------------------------------------------------------------------------

    def model_get(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"models/{name}/")

    def model_create(self, name: str, **fields: Any) -> dict[str, Any]:
        return self._json("POST", "models/", json={"name": name, **fields})

    def push(
        self,
        model: str,
        artifact: Path,
        *,
        framework: str,
        metadata: Mapping[str, Any] | None = None,
        reference: Path | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Upload ``artifact`` as a version of ``model``: (version, created). Pushing bytes
        the model already holds returns that version with created False (server-side, by
        the artifact's sha256)."""
        import json

        data = {"framework": framework, "metadata": json.dumps(dict(metadata or {}))}
        with artifact.open("rb") as handle:
            files: dict[str, Any] = {"file": (artifact.name, handle)}
            if reference is None:
                response = self._send("POST", f"models/{model}/versions/", data=data, files=files)
            else:
                with reference.open("rb") as ref_handle:
                    files["reference_data"] = (reference.name, ref_handle)
                    response = self._send(
                        "POST", f"models/{model}/versions/", data=data, files=files
                    )
        return response.json(), response.status_code == 201

    def version_get(self, ref: VersionRef) -> dict[str, Any]:
        return self._json("GET", f"models/{ref.model}/versions/{ref.number}/")

    def submit(self, ref: VersionRef, comment: str = "") -> dict[str, Any]:
        return self._json(
            "POST", f"models/{ref.model}/versions/{ref.number}/submit/", json={"comment": comment}
        )

    def alias_set(self, ref: VersionRef, alias: str, reason: str = "") -> dict[str, Any]:
        return self._json(
            "PUT",
            f"models/{ref.model}/aliases/{alias}/",
            json={"version": ref.number, "reason": reason},
        )

    def wait_version(
        self, ref: VersionRef, target: str, *, timeout: float, progress: Progress = _quiet
    ) -> WaitResult:
        """Poll until the version reaches ``target`` (validated or approved), reaches a state
        it never leaves (invalid, rejected, archived), or ``timeout`` seconds pass."""
        reached = VERSION_TARGETS[target]

        def classify(body: dict[str, Any]) -> WaitOutcome | None:
            if body["state"] in reached:
                return WaitOutcome.REACHED
            if body["state"] in VERSION_DEAD_ENDS:
                return WaitOutcome.FAILED
            return None

        return self._poll(
            lambda: self.version_get(ref),
            classify,
            lambda body: f"{ref} is {body['state']}",
            timeout=timeout,
            progress=progress,
        )

    def wait_live(
        self, ref: VersionRef, deployment: str, *, timeout: float, progress: Progress = _quiet
    ) -> WaitResult:
        """Poll until ``deployment`` serves the version live."""

        def classify(body: dict[str, Any]) -> WaitOutcome | None:
            if body.get("model") != ref.model:
                raise ApiError(
                    400,
                    "wrong_model",
                    f"Deployment {deployment} serves model {body.get('model')}, not {ref.model}.",
                )
            return WaitOutcome.REACHED if body.get("live_version") == ref.number else None

        def describe(body: dict[str, Any]) -> str:
            rollout = body.get("current_rollout") or {}
            doing = f", rollout {rollout['id']} {rollout['state']}" if rollout else ""
            return f"{deployment} serves v{body.get('live_version')}{doing}"

        return self._poll(
            lambda: self.deployment_get(deployment),
            classify,
            describe,
            timeout=timeout,
            progress=progress,
        )

    # --- deployments ------------------------------------------------------------------------

    def deployments(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "deployments/", params={"page_size": 200})["results"])

    def deployment_get(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"deployments/{name}/")

    def deployment_follow(self, name: str, alias: str, reason: str = "") -> dict[str, Any]:
        return self._json(
            "PUT", f"deployments/{name}/follow/", json={"alias": alias, "reason": reason}
        )

    def rollout_start(
        self, deployment: str, *, version: int | None = None, alias: str = "", reason: str = ""
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"reason": reason}
        if version is not None:
            body["version"] = version
        if alias:
            body["alias"] = alias
        return self._json("POST", f"deployments/{deployment}/rollouts/", json=body)

    def rollout_get(self, deployment: str, rollout_id: int) -> dict[str, Any]:
        return self._json("GET", f"deployments/{deployment}/rollouts/{rollout_id}/")

    def rollback(self, deployment: str, reason: str = "") -> dict[str, Any]:
        return self._json("POST", f"deployments/{deployment}/rollback/", json={"reason": reason})

    def wait_rollout(
        self,
        deployment: str,
        rollout_id: int,
        *,
        timeout: float,
        progress: Progress = _quiet,
    ) -> WaitResult:
        """Poll a rollout (or rollback) until traffic is on its version, or it failed; each
        new step of its log goes to ``progress`` as it appears."""
        shown = [0]

        def fetch() -> dict[str, Any]:
            body = self.rollout_get(deployment, rollout_id)
            steps = body.get("steps") or []
            for step in steps[shown[0] :]:
                progress(f"  [{step.get('state', '?')}] {step.get('message', '')}")
            shown[0] = len(steps)
            return body

        def classify(body: dict[str, Any]) -> WaitOutcome | None:
            if body["state"] in ROLLOUT_REACHED:
                return WaitOutcome.REACHED
            if body["state"] in ROLLOUT_FAILED:
                return WaitOutcome.FAILED
            return None

        def describe(body: dict[str, Any]) -> str:
            error = f": {body['error']}" if body.get("error") else ""
            what = f"{body['kind']} {body['id']} of {deployment} to v{body['version']}"
            return f"{what} is {body['state']}{error}"

        return self._poll(fetch, classify, describe, timeout=timeout, progress=progress)

    # --- batch ------------------------------------------------------------------------------

    def batch_run(
        self,
        model: str,
        *,
        version: int | None = None,
        alias: str = "",
        file: Path | None = None,
        input_path: str = "",
        probabilities: bool = False,
        id_column: str = "",
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {"model": model, "probabilities": probabilities}
        if version is not None:
            fields["version"] = version
        if alias:
            fields["alias"] = alias
        if input_path:
            fields["input_path"] = input_path
        if id_column:
            fields["id_column"] = id_column
        if file is None:
            return self._json("POST", "batch-jobs/", json=fields)
        form = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()}
        with file.open("rb") as handle:
            return self._json("POST", "batch-jobs/", data=form, files={"file": (file.name, handle)})

    def batch_get(self, job_id: int) -> dict[str, Any]:
        return self._json("GET", f"batch-jobs/{job_id}/")

    def wait_batch(self, job_id: int, *, timeout: float, progress: Progress = _quiet) -> WaitResult:
        def classify(body: dict[str, Any]) -> WaitOutcome | None:
            if body["state"] in BATCH_REACHED:
                return WaitOutcome.REACHED
            if body["state"] in BATCH_FAILED:
                return WaitOutcome.FAILED
            return None

        def describe(body: dict[str, Any]) -> str:
            done = (
                f" ({body['rows_done']}/{body['total_rows']} rows)"
                if body.get("total_rows")
                else ""
            )
            error = f": {body['error']}" if body.get("error") else ""
            return f"batch job {job_id} is {body['state']}{done}{error}"

        return self._poll(
            lambda: self.batch_get(job_id), classify, describe, timeout=timeout, progress=progress
        )

    def batch_download(self, job_id: int, destination: Path) -> int:
        """Write the job's Parquet output to ``destination``; the bytes written."""
        written = 0
        partial = destination.with_name(destination.name + ".part")
        try:
            with self._http.stream("GET", f"batch-jobs/{job_id}/output/") as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError.from_response(response)
                with partial.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
                        written += len(chunk)
        except httpx.TransportError as exc:
            partial.unlink(missing_ok=True)
            raise ApiError(0, "unreachable", f"Download from {self.url} failed: {exc}.") from exc
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(destination)  # never leave a half-written file under the asked name
        return written
