from __future__ import annotations

import builtins
import io
import os
import pickle
import struct
import subprocess

import numpy as np
import pytest

from registry.validation.scanning import check_global, scan_artifact
from tests.registry.validation.helpers import CustomEstimator, Evil


def _flagged(report) -> set[str]:
    return {f"{finding.module}.{finding.name}" for finding in report.findings}


@pytest.mark.parametrize(
    "name",
    [
        "pickle",
        "joblib",
        "joblib-compressed",
        "skops",
        "xgboost-json",
        "xgboost-ubj",
        "lightgbm-text",
        "onnx",
    ],
)
def test_scan_passes_real_models(artifacts, name):
    artifact = artifacts[name]

    report = scan_artifact(artifact.path, artifact.fmt)

    assert report.safe, report.findings
    assert report.findings == []
    assert report.format == artifact.fmt


def test_scan_lists_the_globals_a_joblib_model_imports(artifacts):
    report = scan_artifact(artifacts["joblib"].path, "joblib")

    assert "sklearn.ensemble._forest.RandomForestClassifier" in report.globals_seen
    assert "sklearn.tree._tree.Tree" in report.globals_seen
    assert "joblib.numpy_pickle.NumpyArrayWrapper" in report.globals_seen
    assert report.scanner == "picklescan+allowlist"
    assert "picklescan" in report.scanner_version


def test_scan_report_to_dict_is_plain_data(write_pickle):
    report = scan_artifact(write_pickle(Evil(os.system, "true")), "pickle")

    data = report.to_dict()

    assert data["safe"] is False
    assert data["format"] == "pickle"
    assert {"module", "name", "severity", "reason"} <= set(data["findings"][0])


def test_scan_flags_os_system_reduce(write_pickle):
    report = scan_artifact(write_pickle(Evil(os.system, "echo pwned")), "pickle")

    assert not report.safe
    assert _flagged(report) & {"os.system", "posix.system"}
    finding = next(f for f in report.findings if f.name == "system")
    assert finding.severity == "dangerous"


def test_scan_flags_builtins_eval(write_pickle):
    report = scan_artifact(write_pickle(Evil(builtins.eval, "1 + 1")), "pickle")

    assert not report.safe
    assert "builtins.eval" in _flagged(report)


def test_scan_flags_subprocess_popen(write_pickle):
    report = scan_artifact(write_pickle(Evil(subprocess.Popen, ["true"])), "pickle")

    assert not report.safe
    assert "subprocess.Popen" in _flagged(report)


def test_scan_flags_getattr_reduce_chain(tmp_path):
    # getattr(__import__("os"), "system")("true"), written by hand as protocol 0.
    path = tmp_path / "getattr.pkl"
    path.write_bytes(
        b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(S'os'\ntRS'system'\ntR(S'true'\ntR."
    )

    report = scan_artifact(path, "pickle")

    assert not report.safe
    assert {"builtins.getattr", "builtins.__import__"} <= _flagged(report)


def test_scan_flags_joblib_file_wrapping_malicious_object(write_pickle, sklearn_models):
    path = write_pickle(
        {"model": sklearn_models["forest"], "hook": Evil(os.system, "true")}, how="joblib"
    )

    report = scan_artifact(path, "joblib")

    assert not report.safe
    assert _flagged(report) & {"os.system", "posix.system"}


def test_scan_finds_global_hidden_after_joblib_array(write_pickle):
    # A linear opcode scan (picklescan alone) stops at the raw array bytes and never
    # sees what follows them; the joblib-aware walk does.
    path = write_pickle([np.arange(1000.0), Evil(subprocess.Popen, ["true"])], how="joblib")
    from picklescan.scanner import scan_file_path

    assert not any(g.name == "Popen" for g in scan_file_path(str(path)).globals)

    report = scan_artifact(path, "joblib")

    assert "subprocess.Popen" in _flagged(report)


def _text(value: str) -> bytes:
    """SHORT_BINUNICODE opcode."""
    data = value.encode()
    return b"\x8c" + bytes([len(data)]) + data


def _joblib_uint8_array_wrapper(length: int) -> bytes:
    """Opcodes joblib writes for a uint8 array of ``length`` items, up to its BUILD."""
    return (
        b"cjoblib.numpy_pickle\nNumpyArrayWrapper\n)\x81}("  # NEWOBJ wrapper, state dict
        + _text("shape") + b"K" + bytes([length]) + b"\x85"
        + _text("dtype") + b"cnumpy\ndtype\n" + _text("u1") + b"\x89\x88\x87R"
        + b"(K\x03" + _text("|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        + _text("order") + _text("C") + _text("numpy_array_alignment_bytes") + b"N"
        + b"ub"  # SETITEMS, BUILD: joblib now reads the array bytes from the file
    )  # fmt: skip


def test_scan_follows_protocol_4_frames_like_joblib(tmp_path):
    # joblib reads array bytes from the file *after* the current frame, then goes on with
    # the opcodes left in the frame. A walker that skipped the array bytes right after
    # BUILD would skip the hidden call and read the harmless filler as opcodes instead.
    hidden = b"cposix\nsystem\n" + _text("true") + b"\x85R0"  # system("true"); POP
    frame = _joblib_uint8_array_wrapper(len(hidden)) + hidden
    data = b"\x80\x04\x95" + struct.pack("<Q", len(frame)) + frame
    data += b"N" * (len(hidden) - 1) + b"0" + b"."  # the array's bytes, then STOP
    path = tmp_path / "framed.joblib"
    path.write_bytes(data)

    report = scan_artifact(path, "joblib")

    assert "posix.system" in _flagged(report)


def test_scan_refuses_joblib_array_wrapper_used_outside_its_build(tmp_path):
    # The wrapper is memoized, built, then fetched again and built a second time: joblib
    # would read a second array the walk cannot place, so the file is refused.
    wrapper = _joblib_uint8_array_wrapper(2).replace(b"\x81}", b"\x81\x94}", 1)
    data = b"\x80\x04" + wrapper + b"\x01\x02" + b"0h\x00}b" + b"\x03\x04" + b"."
    path = tmp_path / "reused.joblib"
    path.write_bytes(data)

    report = scan_artifact(path, "joblib")

    assert not report.safe
    assert any("outside its own BUILD" in f.reason for f in report.findings)


@pytest.mark.parametrize("compress", [0, ("zlib", 3)])
def test_scan_stays_aligned_through_joblib_arrays_of_every_layout(write_pickle, compress):
    # The global after the arrays is found only if every payload was skipped exactly as
    # joblib reads it (so a joblib format change shows up here first).
    arrays = [
        np.arange(12.0).reshape(3, 4),
        np.asfortranarray(np.ones((3, 2), dtype=np.float32)),
        np.array(7, dtype=np.int8),
        np.empty((0, 3)),
        np.zeros(3, dtype=[("left", "<i8"), ("threshold", "<f8"), ("pair", "<f4", (2,))]),
        np.array(["a", "bc"], dtype="<U5"),
        np.array(["2024-01-01"], dtype="datetime64[D]"),
        np.array([True, False]),
        np.array(["spam", np.arange(3), None], dtype=object),
    ]
    path = write_pickle(
        [*arrays, Evil(subprocess.Popen, ["true"])], how="joblib", compress=compress
    )

    report = scan_artifact(path, "joblib")

    assert [f"{f.module}.{f.name}" for f in report.findings] == ["subprocess.Popen"]


@pytest.mark.parametrize("compress", [("zlib", 3), ("gzip", 3), ("bz2", 3), ("lzma", 3)])
def test_scan_flags_malicious_object_in_compressed_joblib(write_pickle, compress):
    path = write_pickle([np.ones(10), Evil(os.system, "true")], how="joblib", compress=compress)

    report = scan_artifact(path, "joblib")

    assert not report.safe
    assert _flagged(report) & {"os.system", "posix.system"}


def test_scan_refuses_truncated_pickle_it_cannot_read_to_the_end(artifacts, tmp_path):
    data = artifacts["joblib"].path.read_bytes()
    path = tmp_path / "truncated.joblib"
    path.write_bytes(data[: len(data) // 2])

    report = scan_artifact(path, "joblib")

    assert not report.safe
    assert report.findings[0].severity == "error"
    assert "could not be fully scanned" in report.findings[0].reason


def test_scan_names_dangerous_globals_found_before_a_corrupt_tail(tmp_path):
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps(Evil(os.system, "true"), protocol=2)[:-3])

    report = scan_artifact(path, "pickle")

    assert "could not be fully scanned" in report.findings[0].reason
    assert _flagged(report) & {"os.system", "posix.system"}


def test_scan_flags_class_outside_the_allow_list(write_pickle):
    report = scan_artifact(write_pickle(CustomEstimator()), "pickle")

    assert not report.safe
    finding = report.findings[0]
    assert finding.name == "CustomEstimator"
    assert finding.severity == "untrusted"
    assert "allow-list" in finding.reason


def test_scan_flags_stack_global_with_computed_name(tmp_path):
    # STACK_GLOBAL whose module name is produced by a call at load time.
    stream = io.BytesIO()
    stream.write(b"\x80\x04")
    stream.write(b"cbuiltins\nstr\n(X\x02\x00\x00\x00ostR")  # str("os")
    stream.write(b"X\x06\x00\x00\x00system\x93.")
    path = tmp_path / "computed.pkl"
    path.write_bytes(stream.getvalue())

    report = scan_artifact(path, "pickle")

    assert not report.safe
    assert any("computed at load time" in f.reason for f in report.findings)


def test_scan_refuses_attribute_path_out_of_an_allowed_module(tmp_path):
    # Protocol 4 resolves "os.system" as an attribute path starting in sklearn.base.
    data = pickle.dumps(1, protocol=4)[:-1]  # drop STOP, keep PROTO
    data += b"\x8c\x0csklearn.base\x8c\x0eos.path.exists\x93\x85."
    path = tmp_path / "dotted.pkl"
    path.write_bytes(data)

    report = scan_artifact(path, "pickle")

    assert not report.safe
    assert "sklearn.base.os.path.exists" in _flagged(report)


def test_check_global_is_exact_membership_of_the_allow_list():
    assert check_global("numpy", "load")[0] == "dangerous"
    assert check_global("numpy", "float64") is None
    # Not referenced by any generated model, so not on the list, harmless or not.
    assert check_global("numpy", "log1p")[0] == "untrusted"
    assert check_global("numpy.lib._npyio_impl", "loadtxt")[0] == "untrusted"
    assert check_global("sklearn.datasets", "fetch_openml")[0] == "untrusted"
    assert check_global("sklearn.utils._tags", "attrgetter")[0] == "dangerous"
    assert check_global("sklearn.linear_model._logistic", "LogisticRegression") is None


def test_scan_refuses_skops_file_with_untrusted_type(tmp_path):
    import skops.io

    path = tmp_path / "custom.skops"
    skops.io.dump(CustomEstimator(), path)

    report = scan_artifact(path, "skops")

    assert not report.safe
    assert any(f.name == "CustomEstimator" for f in report.findings)


def test_scan_marks_data_only_formats_safe(artifacts):
    for fmt in ("onnx", "xgboost-json", "xgboost-ubj", "lightgbm-text"):
        report = scan_artifact(artifacts[fmt].path, fmt)
        assert report.safe
        assert report.scanner == "format"


def test_scan_rejects_unknown_format_as_programming_error(artifacts):
    with pytest.raises(ValueError, match="unknown artifact format"):
        scan_artifact(artifacts["pickle"].path, "tensorflow")


# --- the allow-list and its generator ---------------------------------------------------------


def test_checked_in_allow_list_is_for_the_installed_libraries():
    import importlib
    import json

    from registry.modelkit.allowlist import ALLOWLIST_FILE, allowed_globals, allowlist_version
    from registry.validation.allowlist_generate import ALLOWLIST_VERSION, judge

    data = json.loads(ALLOWLIST_FILE.read_text())
    assert allowlist_version() == ALLOWLIST_VERSION == data["version"]
    # A library upgrade changes what models reference: regenerate, review, bump.
    for name, version in data["generated_with"].items():
        assert importlib.import_module(name).__version__ == version, name
    assert len(allowed_globals()) == len(data["globals"]) > 250
    # Every entry still passes the rule it was generated under.
    assert [f"{m}.{n}" for m, n in allowed_globals() if judge(m, n) is not None] == []


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("sklearn.feature_selection._base", "attrgetter"),  # operator, re-exported
        ("xgboost.core", "os"),  # a module
        ("sklearn.model_selection._search", "reduce"),  # functools
        ("sklearn.datasets._base", "NamedTemporaryFile"),  # tempfile
        ("sklearn.datasets._twenty_newsgroups", "pickle"),
        ("numpy.linalg", "test"),  # a test runner instance
        ("lightgbm.basic", "__builtins__"),
        ("builtins", "getattr"),
        ("builtins", "eval"),
        ("builtins", "__import__"),
        ("os", "system"),
        ("importlib", "import_module"),
        ("numpy", "load"),
        ("sklearn.base", "os.system"),
        ("runpy", "run_path"),
    ],
)
def test_the_generator_rule_refuses_what_models_must_never_name(module, name):
    from registry.validation.allowlist_generate import judge

    assert judge(module, name) is not None
    assert check_global(module, name) is not None


def test_the_generator_rule_allows_classes_functions_ufuncs_and_dtypes():
    from registry.validation.allowlist_generate import judge

    assert judge("sklearn.linear_model._logistic", "LogisticRegression") is None
    assert judge("numpy", "log1p") is None  # a ufunc (allowed if a model referenced it)
    assert judge("numpy", "dtype") is None
    assert judge("numpy._core.multiarray", "_reconstruct") is None
    assert judge("builtins", "slice") is None


def test_a_decision_for_another_allow_list_or_format_is_refused(artifacts):
    from registry.modelkit.loading import LoaderDecisionError, load_model, loader_decision

    decision = loader_decision("joblib")
    assert decision == {"format": "joblib", "loader": "restricted-joblib", "allowlist_version": 2}
    assert load_model(artifacts["joblib"].path, decision).predict is not None
    for bad in (
        {},
        {**decision, "allowlist_version": 1},
        {**decision, "loader": "restricted-pickle"},
        {"format": "skops", "loader": "skops-recorded-trust", "allowlist_version": 2},
    ):
        with pytest.raises(LoaderDecisionError):
            load_model(artifacts["joblib"].path, bad)
    # Data-only formats name no globals: a decision from an older list still loads them.
    older = {**loader_decision("xgboost-json"), "allowlist_version": 1}
    assert load_model(artifacts["xgboost-json"].path, older).num_features() == 4


def test_a_joblib_file_is_never_read_as_a_plain_pickle(artifacts):
    from registry.modelkit.allowlist import GlobalRefusedError
    from registry.modelkit.loading import load_model, loader_decision

    # Under a pickle decision joblib's array wrapper is refused: the file is never read a
    # second way (and the scan of a "pickle" refuses the wrapper likewise).
    with pytest.raises(GlobalRefusedError, match="NumpyArrayWrapper"):
        load_model(artifacts["joblib"].path, loader_decision("pickle"))
    assert not scan_artifact(artifacts["joblib"].path, "pickle").safe
