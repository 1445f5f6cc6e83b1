"""The ``modelyard`` command: push, wait, submit, promote, deploy, roll back, batch, status.

Exit codes (stable, for CI scripts):
  0  done / the awaited state was reached
  1  any other error (a refused request, bad arguments, the server unreachable)
  2  the awaited state can never be reached: invalid, rejected or archived version,
     failed or rolled-back rollout, failed or cancelled batch job
  3  timeout
  4  not authenticated or not allowed (HTTP 401 or 403)

Progress goes to stderr; the result goes to stdout (JSON with ``--json``), so
``modelyard push ... --json | jq`` works.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from modelyard_client.client import ApiError, Client, VersionRef, WaitOutcome, WaitResult

EXIT_OK, EXIT_ERROR, EXIT_NEVER, EXIT_TIMEOUT, EXIT_AUTH = 0, 1, 2, 3, 4
WAIT_EXIT = {
    WaitOutcome.REACHED: EXIT_OK,
    WaitOutcome.FAILED: EXIT_NEVER,
    WaitOutcome.TIMEOUT: EXIT_TIMEOUT,
}
FRAMEWORK_BY_SUFFIX = {
    ".pkl": "sklearn",
    ".pickle": "sklearn",
    ".joblib": "sklearn",
    ".skops": "skops",
    ".onnx": "onnx",
    ".ubj": "xgboost",
    ".json": "xgboost",
    ".txt": "lightgbm",
}


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    # argparse exits 2 on bad arguments, which here means "rejected": use 1 instead.
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"modelyard: error: {message}\n")


class Output:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def progress(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def result(self, body: Any, text: str) -> None:
        if self.as_json:
            print(json.dumps(body, indent=2, sort_keys=True, default=str))
        else:
            print(text)

    def waited(self, result: WaitResult, text: str) -> int:
        body = {**result.body, "wait": {"outcome": result.outcome.value, "seconds": result.seconds}}
        if result.outcome is WaitOutcome.REACHED:
            self.result(body, text)
        else:
            if self.as_json:
                print(json.dumps(body, indent=2, sort_keys=True, default=str))
            print(f"modelyard: {result.message}", file=sys.stderr)
        return WAIT_EXIT[result.outcome]


def _ref(args: argparse.Namespace) -> VersionRef:
    try:
        return VersionRef.parse(args.version, getattr(args, "model", None))
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _metadata(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    if text.startswith("@"):  # @file.json, as curl does
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise UsageError(f"--metadata {text}: {exc.strerror}") from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--metadata is not valid JSON: {exc.msg} (at {exc.pos}).") from exc
    if not isinstance(value, dict):
        raise UsageError("--metadata must be a JSON object.")
    return value


def _existing_file(path: str, what: str) -> Path:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{what} {path!r} is not a file.")
    return file


def cmd_push(client: Client, args: argparse.Namespace, out: Output) -> int:
    artifact = _existing_file(args.file, "FILE")
    reference = _existing_file(args.reference, "--reference") if args.reference else None
    framework = args.framework or FRAMEWORK_BY_SUFFIX.get(artifact.suffix.lower())
    if framework is None:
        raise UsageError(f"Cannot tell the framework of {artifact.name}: pass --framework.")
    metadata = _metadata(args.metadata)
    if args.create_model:
        try:
            client.model_get(args.model)
        except ApiError as exc:
            if exc.status != 404:
                raise
            client.model_create(args.model)
            out.progress(f"created model {args.model}")
    version, created = client.push(
        args.model, artifact, framework=framework, metadata=metadata, reference=reference
    )
    ref = VersionRef(args.model, version["number"])
    body = {**version, "ref": str(ref), "created": created}
    how = "pushed as" if created else "already held (same sha256) as"
    out.result(body, f"{artifact.name} {how} {ref} ({version['state']})")
    return EXIT_OK


def cmd_wait(client: Client, args: argparse.Namespace, out: Output) -> int:
    ref = _ref(args)
    if args.target == "live":
        if not args.deployment:
            raise UsageError("--for live needs --deployment NAME.")
        result = client.wait_live(ref, args.deployment, timeout=args.timeout, progress=out.progress)
        return out.waited(result, f"{args.deployment} serves {ref}")
    result = client.wait_version(ref, args.target, timeout=args.timeout, progress=out.progress)
    if result.outcome is WaitOutcome.FAILED:
        result.message = _dead_end(result.body, ref)
    return out.waited(result, f"{ref} is {result.body['state']}")


def _dead_end(version: dict[str, Any], ref: VersionRef) -> str:
    state = version["state"]
    if state == "invalid":
        report = version.get("validation_report") or {}
        reason = report.get("error") or (report.get("load") or {}).get("error") or ""
        return f"{ref} is invalid" + (f": {reason}" if reason else "")
    if state == "rejected":
        comments = [r.get("comment") for r in version.get("reviews") or [] if r.get("comment")]
        return f"{ref} was rejected" + (f": {comments[-1]}" if comments else "")
    return f"{ref} is {state}"


def cmd_submit(client: Client, args: argparse.Namespace, out: Output) -> int:
    ref = _ref(args)
    try:
        version = client.submit(ref, args.comment)
    except ApiError as exc:
        # A re-run pipeline submits again: a version already in review (or past it) is done.
        if exc.status != 409:
            raise
        version = client.version_get(ref)
        if version["state"] not in ("in_review", "approved"):
            raise
        out.result(version, f"{ref} is already {version['state']}")
        return EXIT_OK
    out.result(version, f"{ref} is {version['state']}")
    return EXIT_OK


def cmd_promote(client: Client, args: argparse.Namespace, out: Output) -> int:
    ref = _ref(args)
    alias = client.alias_set(ref, args.alias, args.reason)
    out.result(alias, f"{ref.model}@{args.alias} now points at v{ref.number}")
    return EXIT_OK


def _wait_rollout(
    client: Client, args: argparse.Namespace, out: Output, rollout: dict[str, Any]
) -> int:
    out.progress(f"{rollout['kind']} {rollout['id']} of {args.deployment} to v{rollout['version']}")
    if args.no_wait:
        out.result(rollout, f"{rollout['kind']} {rollout['id']} is {rollout['state']}")
        return EXIT_OK
    result = client.wait_rollout(
        args.deployment, rollout["id"], timeout=args.timeout, progress=out.progress
    )
    return out.waited(
        result, f"{args.deployment} serves v{result.body['version']} ({result.body['state']})"
    )


def cmd_deploy(client: Client, args: argparse.Namespace, out: Output) -> int:
    try:
        rollout = client.rollout_start(
            args.deployment,
            version=args.version_number,
            alias=args.alias or "",
            reason=args.reason,
        )
    except ApiError as exc:
        # A re-run pipeline deploys again: the version already serving is success.
        if exc.code != "already_live":
            raise
        deployment = client.deployment_get(args.deployment)
        out.result(deployment, exc.message)
        return EXIT_OK
    return _wait_rollout(client, args, out, rollout)


def cmd_rollback(client: Client, args: argparse.Namespace, out: Output) -> int:
    return _wait_rollout(client, args, out, client.rollback(args.deployment, args.reason))


def cmd_follow(client: Client, args: argparse.Namespace, out: Output) -> int:
    deployment = client.deployment_follow(args.deployment, args.alias, args.reason)
    following = deployment.get("follow_alias") or "no alias"
    out.result(deployment, f"{args.deployment} follows {following}")
    return EXIT_OK


def cmd_batch_run(client: Client, args: argparse.Namespace, out: Output) -> int:
    if (args.file is None) == (not args.input_path):
        raise UsageError("Give the input as --file PATH or --input-path SERVER_PATH (one).")
    if args.download and not args.wait:
        raise UsageError("--download needs --wait.")
    # Checked before the job is queued: a typo here must not cost a whole job's run.
    if args.download and not Path(args.download).absolute().parent.is_dir():
        raise UsageError(f"--download {args.download}: its folder does not exist.")
    job = client.batch_run(
        args.model,
        version=args.version_number,
        alias=args.alias or "",
        file=_existing_file(args.file, "--file") if args.file else None,
        input_path=args.input_path or "",
        probabilities=args.probabilities,
        id_column=args.id_column or "",
    )
    out.progress(f"batch job {job['id']} queued")
    if not args.wait:
        out.result(job, f"batch job {job['id']} is {job['state']}")
        return EXIT_OK
    result = client.wait_batch(job["id"], timeout=args.timeout, progress=out.progress)
    if result.outcome is WaitOutcome.REACHED and args.download:
        size = client.batch_download(job["id"], Path(args.download))
        out.progress(f"wrote {size:,} bytes to {args.download}")
    return out.waited(
        result, f"batch job {job['id']} succeeded ({result.body.get('output_rows')} rows)"
    )


def cmd_status(client: Client, args: argparse.Namespace, out: Output) -> int:
    if args.deployment:
        d = client.deployment_get(args.deployment)
        rollout = d.get("current_rollout")
        lines = [
            f"{d['name']} ({d['environment']}, model {d['model']}): live v{d['live_version']} "
            f"in slot {d['live_slot'] or '-'}"
            + (f", follows @{d['follow_alias']}" if d.get("follow_alias") else ""),
            *(
                f"  slot {s['color']}: v{s['version']} {s['state']} {s['url']}"
                for s in d.get("slots", [])
            ),
        ]
        if rollout:
            lines.append(
                f"  {rollout['kind']} {rollout['id']} to v{rollout['version']}: {rollout['state']}"
            )
        lines.append(f"  endpoint {d['endpoint']}")
        out.result(d, "\n".join(lines))
        return EXIT_OK
    deployments = client.deployments()
    rows = [
        f"{d['name']:<24} {d['environment']:<11} {d['model']:<20} live v{d['live_version']}"
        for d in deployments
    ]
    out.result(deployments, "\n".join(rows) or "no deployments")
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    # A _Parser too: the subparsers (parser_class=_Parser) take it as a parent.
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    common.add_argument("--url", help="server URL (default: $MODELYARD_URL)")
    common.add_argument("--token", help="API token (default: $MODELYARD_TOKEN)")

    parser = _Parser(prog="modelyard", description=__doc__.split("\n")[0], parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, handler: Callable[..., int], help: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help, parents=[common])
        command.set_defaults(handler=handler)
        return command

    def waits(command: argparse.ArgumentParser, default: float) -> None:
        command.add_argument("--timeout", type=float, default=default, help="seconds")

    push = add("push", cmd_push, "upload a model file (idempotent by its sha256)")
    push.add_argument("file")
    push.add_argument("--model", required=True)
    push.add_argument("--reference", help="reference data sample (CSV or Parquet)")
    push.add_argument("--metadata", help="JSON object, or @file.json")
    push.add_argument("--framework", choices=sorted(set(FRAMEWORK_BY_SUFFIX.values())))
    push.add_argument("--create-model", action="store_true", help="create MODEL if missing")

    wait = add("wait", cmd_wait, "wait for a version to be validated, approved or live")
    wait.add_argument("version", help="MODEL:NUMBER")
    wait.add_argument("--model", help="the model, when VERSION is a bare number")
    wait.add_argument("--for", dest="target", choices=["validated", "approved", "live"])
    wait.add_argument("--deployment", help="with --for live: the deployment to watch")
    waits(wait, 600)

    submit = add("submit", cmd_submit, "submit a validated version for review")
    submit.add_argument("version", help="MODEL:NUMBER")
    submit.add_argument("--model")
    submit.add_argument("--comment", default="")

    promote = add("promote", cmd_promote, "point an alias (e.g. champion) at a version")
    promote.add_argument("version", help="MODEL:NUMBER")
    promote.add_argument("--model")
    promote.add_argument("--alias", required=True)
    promote.add_argument("--reason", default="")

    deploy = add("deploy", cmd_deploy, "roll a version out to a deployment and wait")
    deploy.add_argument("deployment")
    target = deploy.add_mutually_exclusive_group(required=True)
    target.add_argument("--version", dest="version_number", type=int)
    target.add_argument("--alias")
    deploy.add_argument("--reason", default="")
    deploy.add_argument("--no-wait", action="store_true")
    waits(deploy, 900)

    rollback = add("rollback", cmd_rollback, "flip a deployment back to its previous version")
    rollback.add_argument("deployment")
    rollback.add_argument("--reason", default="")
    rollback.add_argument("--no-wait", action="store_true")
    waits(rollback, 600)

    follow = add("follow", cmd_follow, "make a deployment follow a protected alias ('' stops)")
    follow.add_argument("deployment")
    follow.add_argument("--alias", required=True)
    follow.add_argument("--reason", default="")

    batch = add("batch", lambda *_: EXIT_ERROR, "batch jobs")
    batch_sub = batch.add_subparsers(dest="batch_command", required=True, parser_class=_Parser)
    run = batch_sub.add_parser("run", help="run a version over an input file", parents=[common])
    run.set_defaults(handler=cmd_batch_run)
    run.add_argument("--model", required=True)
    which = run.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", dest="version_number", type=int)
    which.add_argument("--alias")
    run.add_argument("--file", help="CSV or Parquet file to upload")
    run.add_argument("--input-path", help="a path under the server's allowed input root")
    run.add_argument("--id-column")
    run.add_argument("--probabilities", action="store_true")
    run.add_argument("--wait", action="store_true")
    run.add_argument("--download", help="with --wait: write the Parquet output here")
    waits(run, 3600)

    status = add("status", cmd_status, "deployments and what they serve")
    status.add_argument("deployment", nargs="?")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = Output(args.json)
    if args.command == "wait" and args.target is None:
        print("modelyard: error: wait needs --for validated|approved|live", file=sys.stderr)
        return EXIT_ERROR
    try:
        url = args.url or os.environ.get("MODELYARD_URL", "")
        token = args.token or os.environ.get("MODELYARD_TOKEN", "")
        with Client(url, token) as client:
            return int(args.handler(client, args, out))
    except ApiError as exc:
        print(f"modelyard: {exc.message}", file=sys.stderr)
        if out.as_json:
            error = {"code": exc.code, "message": exc.message, "details": exc.details}
            print(json.dumps({"error": error, "status": exc.status}, indent=2, default=str))
        return EXIT_AUTH if exc.is_auth else EXIT_ERROR
    except (UsageError, ValueError) as exc:
        print(f"modelyard: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # a local file: unreadable upload, a download the disk refused
        where = f" {exc.filename}" if exc.filename else ""
        print(f"modelyard:{where} {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("modelyard: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
