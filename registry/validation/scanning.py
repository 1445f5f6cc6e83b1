"""Static safety scan of an artifact: what would loading it import, and is that allowed?

Nothing here loads the model or imports anything the file names. Pickle/joblib streams are
walked opcode by opcode (see ``_pickle``) exactly as the recorded loader will read them, and
skops schemas node by node (``modelkit.loading.skops_globals``); every global they name must
be on the reviewed allow-list of exact (module, qualified name) pairs
(``registry/modelkit/allowlist.json``), the same list the restricted unpicklers of every
model process enforce. A finding names the global and where it sits in the file (opcode
offset in the decompressed stream, or skops node path). picklescan's deny-list is kept as a
second opinion only: it adds its verdict to findings, it does not decide. ONNX, XGBoost and
LightGBM model files hold no code and are safe by format.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from registry.modelkit.allowlist import allowlist_version, is_allowed
from registry.modelkit.loading import skops_globals

from ._pickle import JOBLIB_ARRAY_WRAPPER, PickleStructureError, walk_pickle_file
from .formats import JOBLIB, PICKLE, SAFE_FORMATS, SKOPS

# Which policy judged a stored report: the version of the checked-in allow-list.
ALLOWLIST_VERSION = allowlist_version()

# Only for the wording of a finding (a name off the list is refused either way): module
# roots and names that are known to run code, import, or touch files and processes.
_DANGEROUS_ROOTS = frozenset(
    {"os", "posix", "nt", "subprocess", "sys", "builtins", "__builtin__", "operator",
     "_operator", "functools", "_functools", "pickle", "_pickle", "pkgutil", "tempfile",
     "io", "_io", "runpy", "importlib", "shutil", "socket", "ctypes", "code", "marshal",
     "types", "webbrowser", "pty", "commands"}
)  # fmt: skip
_DANGEROUS_NAMES = frozenset(
    {"system", "popen", "Popen", "eval", "exec", "compile", "getattr", "setattr",
     "attrgetter", "itemgetter", "methodcaller", "reduce", "partial", "__import__",
     "import_module", "open", "load", "loads", "NamedTemporaryFile", "test", "run"}
)  # fmt: skip

SEVERITY_DANGEROUS = "dangerous"  # known to run code or touch the system
SEVERITY_UNTRUSTED = "untrusted"  # not on the allow-list
SEVERITY_ERROR = "error"  # the file could not be fully scanned


@dataclass
class ScanFinding:
    module: str
    name: str
    severity: str
    reason: str
    # Where in the file: "opcode offset 1234" (of the decompressed stream) or "skops node
    # root.attrs.steps[0]"; empty for problems of the whole file.
    where: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class ScanReport:
    scanner: str
    scanner_version: str
    safe: bool
    findings: list[ScanFinding] = field(default_factory=list)
    globals_seen: list[str] = field(default_factory=list)
    format: str = ""
    # skops only: the types beyond skops' defaults that loading must trust (all on the list).
    skops_trusted: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scan_artifact(path: Path, fmt: str) -> ScanReport:
    """Statically scan an artifact of format ``fmt`` (from detect_format); never loads it."""
    path = Path(path)
    if fmt in (PICKLE, JOBLIB):
        return _scan_pickle(path, fmt)
    if fmt == SKOPS:
        return _scan_skops(path)
    if fmt in SAFE_FORMATS:
        # A data-only format: its loader parses tensors/trees and cannot run code.
        return ScanReport(
            scanner="format",
            scanner_version=f"allowlist {ALLOWLIST_VERSION}",
            safe=True,
            format=fmt,
        )
    raise ValueError(f"unknown artifact format {fmt!r}")


def check_global(module: str, name: str) -> tuple[str, str] | None:
    """Why loading ``module.name`` is not allowed: (severity, reason), or None.

    Exact membership of the allow-list decides; the severity only says how bad it looks.
    """
    if is_allowed(module, name):
        return None
    qualified = f"{module}.{name}"
    reason = f"{qualified} is not on the allow-list of model globals (version {ALLOWLIST_VERSION})"
    parts = {*module.split("."), *name.split(".")}
    if (
        module.split(".")[0] in _DANGEROUS_ROOTS
        or parts & _DANGEROUS_NAMES
        or any(p.startswith("__") and p.endswith("__") for p in parts)
    ):
        return SEVERITY_DANGEROUS, f"{reason}; it can run code or touch the system"
    if "." in name:
        # Protocol 4 resolves dotted names attribute by attribute, which can walk out of
        # an allowed module into anything it imported.
        return SEVERITY_DANGEROUS, f"{reason}; it reaches through attributes of {module}"
    return SEVERITY_UNTRUSTED, reason


# --- pickle / joblib ----------------------------------------------------------------------


def _scan_pickle(path: Path, fmt: str) -> ScanReport:
    picklescan_version = metadata.version("picklescan")
    report = ScanReport(
        scanner="picklescan+allowlist",
        scanner_version=f"picklescan {picklescan_version}, allowlist {ALLOWLIST_VERSION}",
        safe=False,
        format=fmt,
    )
    try:
        # Walked as the recorded loader reads it: joblib's unpickler for joblib files, a
        # plain unpickler (no array payloads, no decompression) for plain pickles.
        walk, _compression = walk_pickle_file(path, joblib_arrays=fmt == JOBLIB)
    except PickleStructureError as exc:
        report.findings.append(
            ScanFinding("", "", SEVERITY_ERROR, f"file could not be fully scanned: {exc}")
        )
        if exc.walk is None:
            return report
        walk = exc.walk  # still judge what was read before the error

    report.globals_seen = [f"{module}.{name}" for module, name in walk.globals]
    for problem in walk.problems:
        report.findings.append(ScanFinding("", "", SEVERITY_ERROR, problem))
    flagged = _picklescan_dangerous(walk.globals)
    for module, name in walk.globals:
        verdict = check_global(module, name)
        if fmt == PICKLE and (module, name) == JOBLIB_ARRAY_WRAPPER:
            # Only joblib's unpickler reads array payloads after the wrapper.
            verdict = (
                SEVERITY_UNTRUSTED,
                "a joblib array wrapper in a file loaded as a plain pickle",
            )
        if (module, name) in flagged:
            # Second opinion: its word is added, and it refuses even a listed global.
            reason = f"picklescan flags {module}.{name} as dangerous"
            verdict = (SEVERITY_DANGEROUS, f"{verdict[1]}; {reason}" if verdict else reason)
        if verdict is not None:
            where = f"opcode offset {walk.offsets[(module, name)]}"
            report.findings.append(ScanFinding(module, name, *verdict, where=where))
    report.safe = not report.findings
    return report


def _picklescan_dangerous(globals_: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """The globals picklescan's deny-list calls dangerous.

    picklescan reads a pickle linearly and stops at the first joblib array payload (every
    joblib dump with arrays comes back as a scan error), so we hand it exactly the globals
    our joblib-aware walk found, as a minimal pickle of GLOBAL opcodes, and use its verdict.
    """
    from picklescan.scanner import SafetyLevel, scan_pickle_bytes

    opcodes = bytearray()
    for module, name in globals_:
        if any(c in module + name for c in " \n\r"):
            continue  # cannot be spelled as GLOBAL; check_global rejects such names
        opcodes += b"c" + module.encode() + b"\n" + name.encode() + b"\n"
    opcodes += b"."
    result = scan_pickle_bytes(io.BytesIO(bytes(opcodes)), "artifact")
    return {(g.module, g.name) for g in result.globals if g.safety == SafetyLevel.Dangerous}


# --- skops ------------------------------------------------------------------------------


def skops_trusted_types(path: Path) -> tuple[list[str], list[ScanFinding]]:
    """The types of a skops file to trust beyond skops' defaults, and findings for the rest.

    Every type, function and method the schema names must be on the allow-list; the
    trusted list (what ``skops.io.load(trusted=...)`` needs) is recorded on the version at
    validation and is all that serving and batch ever trust.
    """
    _, trusted, findings = _audit_skops(path)
    return trusted, findings


def _audit_skops(path: Path) -> tuple[list[str], list[str], list[ScanFinding]]:
    """(every global the schema names, the trusted list, findings)."""
    from skops.io import get_untrusted_types

    try:
        data = Path(path).read_bytes()
        named = list(skops_globals(data))
        untrusted = get_untrusted_types(data=data)
    except Exception as exc:
        reason = f"skops file could not be audited: {type(exc).__name__}: {exc}"
        return [], [], [ScanFinding("", "", SEVERITY_ERROR, reason)]
    findings = []
    for module, name, node in named:
        verdict = check_global(module, name)
        if verdict is not None:
            findings.append(ScanFinding(module, name, *verdict, where=f"skops node {node}"))
    listed = {f"{module}.{name}" for module, name, _ in named if is_allowed(module, name)}
    trusted = sorted(t for t in untrusted if t in listed)
    if not findings and len(trusted) != len(untrusted):
        # skops names a type our walk did not see: never trust what was not judged.
        unseen = ", ".join(sorted(set(untrusted) - listed))
        findings.append(ScanFinding("", "", SEVERITY_ERROR, f"skops types not audited: {unseen}"))
    return [f"{module}.{name}" for module, name, _ in named], trusted, findings


def _scan_skops(path: Path) -> ScanReport:
    named, trusted, findings = _audit_skops(path)
    return ScanReport(
        scanner="skops+allowlist",
        scanner_version=f"skops {metadata.version('skops')}, allowlist {ALLOWLIST_VERSION}",
        safe=not findings,
        findings=findings,
        globals_seen=named,
        format=SKOPS,
        skops_trusted=trusted if not findings else [],
    )
