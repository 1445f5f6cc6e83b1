"""Generate registry/modelkit/allowlist.json: the exact globals real models reference.

    python -m registry.validation.allowlist_generate [--check]

Fits every model of ``allowlist_zoo`` (all public sklearn estimators, the XGBoost and
LightGBM wrappers and boosters, typical pipelines), writes each as pickle (protocols 0, 2,
4, 5), joblib (plain and zlib-compressed) and skops, and records every global those files
reference, walked exactly as the loaders read them (``_pickle.walk_pickle``,
``modelkit.loading.skops_globals``). Each candidate is then judged by *resolving the
object* (``judge``): a re-export such as ``sklearn.x.attrgetter`` is seen for what it is.
What passes is the list; what was refused is written beside it with the reason, for
review. Review the diff before checking a new list in, and bump ALLOWLIST_VERSION.

``--check`` regenerates in memory and exits 1 if the checked-in list differs (for CI after a
library upgrade).
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import sys
import tempfile
import types
import warnings
from pathlib import Path
from typing import Any

from registry.modelkit.allowlist import ALLOWLIST_FILE, resolve

from ._pickle import walk_pickle, walk_pickle_file

# Bump whenever the list changes: every recorded loading decision names the version it was
# validated against, and model processes refuse a decision for another version.
ALLOWLIST_VERSION = 2

ALLOWED_PACKAGES = frozenset({"sklearn", "scipy", "numpy", "xgboost", "lightgbm", "joblib"})
# Never, under any name: modules that run code, import, touch files or the interpreter.
FORBIDDEN_MODULES = frozenset(
    {
        "operator", "_operator", "functools", "_functools", "pickle", "_pickle", "pkgutil",
        "tempfile", "subprocess", "_posixsubprocess", "os", "posix", "nt", "sys", "io",
        "_io", "runpy", "importlib", "builtins", "shutil", "socket", "ctypes", "code",
        "codeop", "marshal", "types", "inspect", "pdb", "webbrowser", "multiprocessing",
        "threading", "_thread", "signal", "zipimport", "glob", "pathlib", "urllib", "http",
        "asyncio", "contextlib", "weakref", "gc", "dill", "cloudpickle", "joblib.externals",
    }
)  # fmt: skip
# builtins that are plain data types (the only builtins a model may name).
SAFE_BUILTINS = frozenset(
    {"bool", "int", "float", "complex", "str", "bytes", "bytearray", "tuple", "list",
     "dict", "set", "frozenset", "slice", "range", "object", "NoneType"}
)  # fmt: skip
# The standard library objects pickles of plain data need, and nothing else.
STDLIB_DATA = frozenset(
    {
        ("copyreg", "_reconstructor"),  # how protocol 0/1 pickles create instances
        ("_codecs", "encode"),  # how protocol 0-2 pickles write bytes
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("collections", "deque"),
        ("collections", "Counter"),
    }
)
# Submodules and names inside allowed packages that read/write files, run tests or code.
DENIED_MODULE_PARTS = frozenset(
    {"tests", "testing", "_testing", "_testutils", "conftest", "__main__", "f2py",
     "distutils", "ctypeslib", "externals", "datasets", "io", "npyio", "_npyio_impl",
     "_datasource", "format", "dask", "spark", "collective", "tracker", "plotting"}
)  # fmt: skip
DENIED_NAMES = frozenset(
    {"system", "popen", "eval", "exec", "compile", "getattr", "setattr", "delattr",
     "import_module", "open", "load", "loads", "save", "savez", "savez_compressed",
     "savetxt", "loadtxt", "genfromtxt", "fromfile", "tofile", "fromregex", "memmap",
     "open_memmap", "DataSource", "dump", "dumps", "load_library", "read_pickle",
     "to_pickle", "urlopen", "remove", "unlink", "rmtree", "run", "call", "test"}
)  # fmt: skip


def judge(module: str, name: str) -> str | None:
    """Why (module, name) may not be on the list, or None if it may."""
    parts = name.split(".")
    if any(_is_dunder(p) for p in [*module.split("."), *parts]):
        return "dunder names are never allowed"
    root = module.split(".")[0]
    if module == "builtins":
        return None if name in SAFE_BUILTINS else "builtins other than plain data types"
    if root in FORBIDDEN_MODULES or module in FORBIDDEN_MODULES:
        return f"nothing from {root} is allowed"
    try:
        obj = resolve(module, name)
    except Exception as exc:
        return f"does not resolve: {type(exc).__name__}: {exc}"
    if isinstance(obj, types.ModuleType):
        return f"is the module {obj.__name__}"
    if (module, name) in STDLIB_DATA:
        return None
    if root not in ALLOWED_PACKAGES:
        return f"{root} is not an allowed package"
    return _judge_object(module, name, obj)


def _is_dunder(part: str) -> bool:
    # __builtins__, __import__, __globals__, __class__ ...; a private constructor such as
    # numpy's __randomstate_ctor or Cython's __pyx_unpickle_<Class> is not one.
    return len(part) > 4 and part.startswith("__") and part.endswith("__")


def _is_function(obj: Any) -> bool:
    import numpy as np

    if isinstance(obj, types.FunctionType | types.BuiltinFunctionType | types.MethodType):
        return True
    # Cython's functions (sklearn's tree/loss reconstructors) and numpy's public functions
    # (np.mean) are callables of their own types, defined in their package.
    if isinstance(obj, type(np.mean)):  # numpy._ArrayFunctionDispatcher
        return True
    return type(obj).__name__ == "cython_function_or_method"


def _judge_object(module: str, name: str, obj: Any) -> str | None:
    import numpy as np

    if isinstance(obj, np.ufunc):
        return None
    if isinstance(obj, type) and issubclass(obj, np.generic | np.ndarray | np.dtype):
        return None
    if not (isinstance(obj, type) or _is_function(obj)):
        return f"is not a class or function but a {type(obj).__module__}.{type(obj).__name__}"
    defined_in = getattr(obj, "__module__", None) or ""
    if defined_in.split(".")[0] not in ALLOWED_PACKAGES:
        return f"re-exports {defined_in}.{getattr(obj, '__qualname__', name)}"
    denied = DENIED_MODULE_PARTS.intersection([*module.split("."), *defined_in.split(".")])
    if denied:
        return f"lives in a denied submodule ({', '.join(sorted(denied))})"
    if parts_denied := DENIED_NAMES.intersection(name.split(".")):
        return f"can touch files, programs or the interpreter ({', '.join(sorted(parts_denied))})"
    return None


def _pickle_globals(model: Any, tmp: Path) -> set[tuple[str, str]]:
    import joblib

    found: set[tuple[str, str]] = set()
    for protocol in (0, 2, 4, 5):
        data = pickle.dumps(model, protocol=protocol)
        found.update(walk_pickle(io.BytesIO(data), joblib_arrays=False).globals)
    for i, compress in enumerate((0, 3)):
        path = tmp / f"model-{i}.joblib"
        joblib.dump(model, path, compress=compress)
        found.update(walk_pickle_file(path)[0].globals)
    return found


def _skops_globals(model: Any) -> set[tuple[str, str]] | str:
    import skops.io

    from registry.modelkit.loading import skops_globals

    try:
        data = skops.io.dumps(model)
    except Exception as exc:  # skops supports most but not all estimators
        return f"{type(exc).__name__}: {exc}"
    return {(module, name) for module, name, _ in skops_globals(data)}


def generate() -> dict[str, Any]:
    from .allowlist_zoo import SKIPPED, all_models

    seen: dict[tuple[str, str], str] = {}
    skops_unsupported: dict[str, str] = {}
    models = 0
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, model in all_models():
            models += 1
            pairs = _pickle_globals(model, Path(tmp))
            from_skops = _skops_globals(model)
            if isinstance(from_skops, str):
                skops_unsupported[label] = from_skops
            else:
                pairs |= from_skops
            for pair in sorted(pairs):
                seen.setdefault(pair, label)
    allowed, refused = [], {}
    for (module, name), label in sorted(seen.items()):
        reason = judge(module, name)
        if reason is None:
            allowed.append([module, name])
        else:
            refused[f"{module}.{name}"] = f"{reason} (seen in {label})"
    return {
        "version": ALLOWLIST_VERSION,
        "generated_with": _library_versions(),
        "models": models,
        "skipped_estimators": SKIPPED,
        "skops_unsupported": skops_unsupported,
        "globals": allowed,
        "refused": refused,
    }


def _library_versions() -> dict[str, str]:
    import importlib

    # By module: xgboost comes from the xgboost or the xgboost-cpu distribution.
    names = ("sklearn", "scipy", "numpy", "xgboost", "lightgbm", "joblib", "skops")
    return {name: importlib.import_module(name).__version__ for name in names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    text = json.dumps(generate(), indent=1, sort_keys=True) + "\n"
    if args.check:
        same = ALLOWLIST_FILE.exists() and ALLOWLIST_FILE.read_text() == text
        print("allow-list is current" if same else "allow-list differs: regenerate and review")
        return 0 if same else 1
    ALLOWLIST_FILE.write_text(text)
    data = json.loads(text)
    print(f"wrote {ALLOWLIST_FILE}: {len(data['globals'])} globals, {len(data['refused'])} refused")
    return 0


if __name__ == "__main__":
    sys.exit(main())
