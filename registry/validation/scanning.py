"""Static safety scan of an artifact: what would loading it import, and is that allowed?

Nothing here loads the model. Pickle/joblib streams are walked opcode by opcode (see
``_pickle``); every global they name must be on our allow-list *and* pass picklescan's
deny-list. skops files are audited with skops' own ``get_untrusted_types``. ONNX, XGBoost
and LightGBM model files hold no code and are safe by format.

The allow-list works on names, without importing anything: it cannot see that an allowed
module re-exports a dangerous function under an innocent name. Names and submodules that
touch files, processes or the interpreter are therefore denied outright, and loading
still happens only in the sandbox (the second line of defence).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from ._pickle import JOBLIB_ARRAY_WRAPPER, PickleStructureError, walk_pickle_file
from .formats import JOBLIB, PICKLE, SAFE_FORMATS, SKOPS

# Bump when the policy below changes, so stored reports say which policy judged them.
ALLOWLIST_VERSION = 1

# Packages (and their submodules) whose classes and functions fitted models reference.
ALLOWED_PACKAGES = ("sklearn", "scipy", "numpy", "xgboost", "lightgbm")

_SAFE_BUILTINS = (
    "bool", "int", "float", "complex", "str", "bytes", "bytearray", "tuple", "list", "dict",
    "set", "frozenset", "slice", "range", "object",
)  # fmt: skip
# Exactly these from the standard library and joblib, nothing else.
ALLOWED_GLOBALS = frozenset(
    {
        *(f"builtins.{name}" for name in _SAFE_BUILTINS),
        "collections.OrderedDict",
        "collections.defaultdict",
        "collections.deque",
        "collections.Counter",
        "copyreg._reconstructor",  # how protocol 0/1 pickles create instances
        "_codecs.encode",  # how protocol 0-2 pickles write bytes
        ".".join(JOBLIB_ARRAY_WRAPPER),
    }
)

# Submodules of allowed packages that no model needs and that read/write files, reach the
# network, compile or run code, or exist only for tests.
DENIED_MODULE_PARTS = frozenset(
    {
        "tests", "testing", "_testing", "_testutils", "conftest", "__main__", "_lib",
        "f2py", "distutils", "ctypeslib", "externals", "datasets", "io", "npyio",
        "_npyio_impl", "_datasource", "format", "dask", "spark", "collective", "tracker",
        "federated", "plotting",
    }
)  # fmt: skip
# Callables that load pickles, touch files, run programs or reach the interpreter, in
# whichever allowed module they might be re-exported from.
DENIED_NAMES = frozenset(
    {
        "system", "popen", "Popen", "spawn", "eval", "exec", "compile", "getattr",
        "setattr", "delattr", "__import__", "import_module", "open", "load", "loads",
        "save", "savez", "savez_compressed", "savetxt", "loadtxt", "genfromtxt", "fromfile",
        "tofile", "fromregex", "memmap", "open_memmap", "DataSource", "dump", "dumps",
        "load_library", "read_pickle", "to_pickle", "urlopen", "remove", "unlink",
        "rmtree", "run", "call", "check_call", "check_output",
    }
)  # fmt: skip
DENIED_NAME_PREFIXES = ("fetch_", "load_", "dump_", "read_", "write_", "save_")

SEVERITY_DANGEROUS = "dangerous"  # known to run code or touch the system
SEVERITY_UNTRUSTED = "untrusted"  # not on the allow-list
SEVERITY_ERROR = "error"  # the file could not be fully scanned


@dataclass
class ScanFinding:
    module: str
    name: str
    severity: str
    reason: str

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
    """Why importing ``module.name`` at load time is not allowed: (severity, reason), or None."""
    qualified = f"{module}.{name}"
    if qualified in ALLOWED_GLOBALS:
        return None
    parts = module.split(".")
    if parts[0] not in ALLOWED_PACKAGES:
        return SEVERITY_UNTRUSTED, f"{qualified} is not on the allow-list of model globals"
    if "." in name:
        # Protocol 4 resolves dotted names attribute by attribute, which can walk out of
        # an allowed module into anything it imported.
        return SEVERITY_DANGEROUS, f"{qualified} reaches through attributes of {module}"
    if denied := DENIED_MODULE_PARTS.intersection(parts):
        return SEVERITY_DANGEROUS, f"{module} is a denied submodule ({', '.join(sorted(denied))})"
    if name in DENIED_NAMES or name.startswith(DENIED_NAME_PREFIXES):
        return SEVERITY_DANGEROUS, f"{qualified} can touch files, programs or the interpreter"
    if module == "numpy" and not _is_plain_numpy_global(name):
        # numpy's top level mixes dtypes and ufuncs with file I/O; allow only the former.
        return SEVERITY_UNTRUSTED, f"{qualified} is not a numpy type or ufunc"
    return None


def _is_plain_numpy_global(name: str) -> bool:
    import numpy as np

    value = vars(np).get(name)  # vars(): no lazy submodule import via numpy.__getattr__
    if isinstance(value, np.ufunc):
        return True
    return isinstance(value, type) and issubclass(value, np.generic | np.ndarray | np.dtype)


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
        walk, _compression = walk_pickle_file(path)
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
        if (module, name) in flagged:
            reason = f"picklescan flags {module}.{name} as dangerous"
            if verdict is not None:
                reason = f"{reason}; {verdict[1]}"
            verdict = (SEVERITY_DANGEROUS, reason)
        if verdict is not None:
            report.findings.append(ScanFinding(module, name, *verdict))
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
    """The types of a skops file we trust beyond skops' defaults, and findings for the rest.

    The sandbox passes exactly this list to ``skops.io.load(trusted=...)``.
    """
    from skops.io import get_untrusted_types

    try:
        untrusted = get_untrusted_types(file=str(path))
    except Exception as exc:
        reason = f"skops file could not be audited: {type(exc).__name__}: {exc}"
        return [], [ScanFinding("", "", SEVERITY_ERROR, reason)]
    trusted: list[str] = []
    findings: list[ScanFinding] = []
    for type_name in untrusted:
        module, _, name = type_name.rpartition(".")
        verdict = check_global(module, name)
        if verdict is None:
            trusted.append(type_name)
        else:
            findings.append(ScanFinding(module, name, *verdict))
    return trusted, findings


def _scan_skops(path: Path) -> ScanReport:
    trusted, findings = skops_trusted_types(path)
    return ScanReport(
        scanner="skops+allowlist",
        scanner_version=f"skops {metadata.version('skops')}, allowlist {ALLOWLIST_VERSION}",
        safe=not findings,
        findings=findings,
        globals_seen=trusted + [f"{f.module}.{f.name}" for f in findings if f.module],
        format=SKOPS,
    )
