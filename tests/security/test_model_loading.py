"""Model files written against a package-prefix allow-list: each is refused by the static
scan with a finding naming the global and where it sits, and by ``modelkit.loading`` (what
the validation child, the generated services and the batch children call) when planted
straight into storage under the recorded decision of a good version. Every payload would
write a marker file; every test asserts that the marker never appears."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import joblib
import numpy as np
import pytest

from registry.modelkit.allowlist import GlobalRefusedError
from registry.modelkit.loading import load_model, loader_decision
from registry.validation.allowlist_generate import judge
from registry.validation.formats import detect_format
from registry.validation.scanning import scan_artifact

# Names that really resolve to the dangerous object in the pinned packages (asserted below),
# so each payload would have run under a package-prefix rule.
ATTRGETTER = ("sklearn.feature_selection._base", "attrgetter")
ITEMGETTER = ("sklearn.feature_extraction._dict_vectorizer", "itemgetter")
OS_MODULE = ("xgboost.core", "os")
PICKLE_MODULE = ("sklearn.datasets._twenty_newsgroups", "pickle")
REDUCE = ("sklearn.model_selection._search", "reduce")
TEMPFILE = ("sklearn.datasets._base", "NamedTemporaryFile")
TEST_RUNNER = ("numpy.linalg", "test")
BUILTINS_DICT = ("lightgbm.basic", "__builtins__")


def test_the_reexports_used_here_are_the_dangerous_objects():
    import functools
    import operator
    import tempfile

    from registry.modelkit.allowlist import resolve

    assert resolve(*ATTRGETTER) is operator.attrgetter
    assert resolve(*ITEMGETTER) is operator.itemgetter
    assert resolve(*OS_MODULE) is os
    assert resolve(*PICKLE_MODULE) is pickle
    assert resolve(*REDUCE) is functools.reduce
    assert resolve(*TEMPFILE) is tempfile.NamedTemporaryFile
    assert type(resolve(*TEST_RUNNER)).__name__ == "PytestTester"
    assert isinstance(resolve(*BUILTINS_DICT), dict)
    # ... and the generator's rule, resolving each, refuses every one of them.
    for pair in (ATTRGETTER, ITEMGETTER, OS_MODULE, PICKLE_MODULE, REDUCE, TEMPFILE):
        assert judge(*pair) is not None, pair
    assert judge(*TEST_RUNNER) is not None and judge(*BUILTINS_DICT) is not None


# --- a tiny pickle assembler (protocol 0 opcodes, plus BINBYTES) ----------------------------


def _g(pair: tuple[str, str]) -> bytes:
    return b"c" + pair[0].encode() + b"\n" + pair[1].encode() + b"\n"


def _s(text: str) -> bytes:
    return b"V" + text.encode("raw_unicode_escape") + b"\n"


def _call(func: bytes, *args: bytes) -> bytes:
    return func + b"(" + b"".join(args) + b"tR"


def _system(command: str) -> bytes:
    """attrgetter('system')(xgboost.core.os)(command), through the re-exported names."""
    return _call(_call(_call(_g(ATTRGETTER), _s("system")), _g(OS_MODULE)), _s(command))


def _payloads(marker: Path) -> dict[str, tuple[bytes, str, str]]:
    """name -> (file bytes, format it is recorded in, the global the finding must name)."""
    touch = f"touch {marker}"
    inner = pickle.dumps(1, protocol=2)[:-1].replace(b"K\x01", b"") + _system(touch) + b"."
    loads = _call(_call(_g(ATTRGETTER), _s("loads")), _g(PICKLE_MODULE))
    exec_ = _call(_call(_g(ITEMGETTER), _s("exec")), _g(BUILTINS_DICT))
    protocol4 = (
        b"\x80\x04\x8c" + bytes([len(OS_MODULE[0])]) + OS_MODULE[0].encode()
        + b"\x8c\x09os.system\x93\x8c" + bytes([len(touch)]) + touch.encode() + b"\x85R."
    )  # fmt: skip
    return {
        "attrgetter-os-system": (_system(touch) + b".", "pickle", ".".join(ATTRGETTER)),
        "pickle-in-pickle": (
            _call(loads, b"B" + struct.pack("<I", len(inner)) + inner) + b".",
            "pickle",
            ".".join(ATTRGETTER),
        ),
        "functools-reduce": (
            _call(_g(REDUCE), _call(_g(ATTRGETTER), _s("system")), b"(" + _g(OS_MODULE) + b"l")
            + b".",
            "pickle",
            ".".join(REDUCE),
        ),
        "tempfile": (
            _call(
                _g(TEMPFILE),
                _s("w"),
                b"I-1\n",
                b"N",
                b"N",
                _s(""),
                _s(marker.name),
                _s(str(marker.parent)),
                b"I00\n",
            )
            + b".",
            "pickle",
            ".".join(TEMPFILE),
        ),
        "numpy-test-runner": (
            _call(_g(TEST_RUNNER), _s("full")) + b".",
            "pickle",
            "numpy.linalg.test",
        ),
        "module-builtins": (
            _call(exec_, _s(f"open({str(marker)!r}, 'w').close()")) + b".",
            "pickle",
            ".".join(ITEMGETTER),
        ),
        "protocol-4-dotted": (protocol4, "pickle", "xgboost.core.os.system"),
        "zlib-joblib": (zlib.compress(_system(touch) + b"."), "joblib", ".".join(ATTRGETTER)),
    }


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "a payload ran"
    assert not any(p.name.startswith("pwned") for p in tmp_path.iterdir())


PAYLOADS = list(_payloads(Path("/x")))


@pytest.mark.parametrize("name", PAYLOADS)
def test_scan_refuses_reexported_dangerous_globals_naming_them(name, marker, tmp_path):
    data, fmt, named = _payloads(marker)[name]
    path = tmp_path / f"{name}.bin"
    path.write_bytes(data)

    assert detect_format(path, "sklearn") == fmt
    report = scan_artifact(path, fmt)

    assert not report.safe
    finding = next(f for f in report.findings if f"{f.module}.{f.name}" == named)
    assert "not on the allow-list" in finding.reason
    assert finding.where.startswith("opcode offset ")


@pytest.mark.parametrize("name", PAYLOADS)
def test_loader_refuses_the_same_files_planted_under_a_good_decision(name, marker, tmp_path):
    data, fmt, _ = _payloads(marker)[name]
    path = tmp_path / "model.bin"
    path.write_bytes(data)  # as if swapped in storage after a good version validated

    with pytest.raises(GlobalRefusedError):
        load_model(path, loader_decision(fmt))


def test_joblib_object_array_payload_is_refused_by_scan_and_loader(marker, tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "objects.joblib"
    joblib.dump({"coef": np.arange(3.0), "extra": np.array([Exploit()], dtype=object)}, path)

    report = scan_artifact(path, "joblib")
    with pytest.raises(GlobalRefusedError, match=r"posix\.system"):
        load_model(path, loader_decision("joblib"))

    assert {f"{f.module}.{f.name}" for f in report.findings} == {"posix.system"}


def _wrapper_then_hidden(hidden: bytes) -> bytes:
    """A NumpyArrayWrapper whose name is escaped (no literal bytes for the sniffer) and whose
    uint8 "array" is ``hidden``: joblib skips those bytes, a plain unpickler runs them."""
    name = _s("\\u004eumpyArrayWrapper")
    state = (
        b"}(" + _s("shape") + b"(I" + str(len(hidden)).encode() + b"\nt"
        + _s("dtype") + _call(_g(("numpy", "dtype")), _s("u1"), b"I00\n", b"I01\n")
        + _s("order") + _s("C") + _s("numpy_array_alignment_bytes") + b"Nu"
    )  # fmt: skip
    return b"\x80\x02" + _s("joblib.numpy_pickle") + name + b"\x93)\x81" + state + b"b" + hidden


def test_format_confusion_file_is_read_one_way_everywhere(marker, tmp_path):
    hidden = _system(f"touch {marker}") + b"0"
    path = tmp_path / "confused.pkl"
    path.write_bytes(_wrapper_then_hidden(hidden) + b".")

    fmt = detect_format(path, "sklearn")
    report = scan_artifact(path, fmt)

    # The sniffer calls it a plain pickle, so the scan walks it as the plain unpickler that
    # loads it will: the hidden call is seen and refused, and so is the wrapper.
    assert fmt == "pickle"
    flagged = {f"{f.module}.{f.name}" for f in report.findings}
    assert {".".join(ATTRGETTER), "joblib.numpy_pickle.NumpyArrayWrapper"} <= flagged
    with pytest.raises(GlobalRefusedError):
        load_model(path, loader_decision("pickle"))


def _skops_bytes(obj, edit) -> bytes:
    import skops.io

    data = skops.io.dumps(obj)
    source = zipfile.ZipFile(io.BytesIO(data))
    schema = json.loads(source.read("schema.json"))
    edit(schema)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            payload = json.dumps(schema) if item.filename == "schema.json" else source.read(item)
            target.writestr(item, payload)
    return out.getvalue()


def test_skops_reduce_and_method_chains_are_refused(tmp_path, marker):
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit(np.eye(4), [0, 1, 0, 1])
    good = tmp_path / "good.skops"
    good.write_bytes(_skops_bytes(model, lambda schema: None))
    trusted = scan_artifact(good, "skops").skops_trusted
    decision = loader_decision("skops", trusted)
    assert load_model(good, decision).predict(np.eye(4)).shape == (4,)

    def to_function(schema):  # a node that resolves to attrgetter through a re-export
        schema["content"]["content"]["solver"] = {
            "__class__": ATTRGETTER[1], "__module__": ATTRGETTER[0],
            "__loader__": "FunctionNode", "__id__": 999,
        }  # fmt: skip

    def to_method(schema):  # a bound method the file would call after construction
        inner = dict(schema)
        schema.clear()
        schema.update({
            "__class__": inner["__class__"], "__module__": inner["__module__"],
            "__loader__": "MethodNode", "content": {"func": "set_params", "obj": inner},
            "protocol": inner["protocol"], "_skops_version": inner["_skops_version"],
        })  # fmt: skip

    def json_node(value):
        kind = {str: "str", int: "int", bool: "bool", type(None): "NoneType"}[type(value)]
        return {
            "__class__": kind, "__module__": "builtins", "__loader__": "JsonNode",
            "content": json.dumps(value), "is_json": True,
        }  # fmt: skip

    def to_reduce(schema):  # NamedTemporaryFile("w", -1, None, None, "", marker, dir, False)
        args = ["w", -1, None, None, "", marker.name, str(marker.parent), False]
        schema["content"]["content"]["solver"] = {
            "__class__": TEMPFILE[1], "__module__": TEMPFILE[0],
            "__loader__": "ConstructorFromReduceNode",
            "content": {
                "__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode",
                "content": [json_node(arg) for arg in args],
            },
        }  # fmt: skip

    method = "sklearn.linear_model._logistic.LogisticRegression.set_params"
    for edit, named in (
        (to_function, ".".join(ATTRGETTER)),
        (to_method, method),
        (to_reduce, ".".join(TEMPFILE)),
    ):
        path = tmp_path / "bad.skops"
        path.write_bytes(_skops_bytes(model, edit))
        report = scan_artifact(path, "skops")
        finding = next(f for f in report.findings if f"{f.module}.{f.name}" == named)
        assert finding.where.startswith("skops node root")
        with pytest.raises(GlobalRefusedError, match=named.rpartition(".")[2]):
            load_model(path, decision)  # planted under the good version's recorded trust


# --- the decision is recorded once, at validation ------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("framework", ["sklearn", "skops"])
def test_validation_records_the_loading_decision_on_the_version(
    registered_model, scientist, api_for, sklearn_model, framework
):
    import skops.io

    from registry.choices import VersionState
    from registry.models import ModelVersion
    from registry.services import version_validate
    from tests.registry.helpers import upload_payload

    artifact, filename = sklearn_model.artifact, "model.joblib"
    if framework == "skops":
        artifact, filename = skops.io.dumps(sklearn_model.model), "model.skops"
    response = api_for(scientist).post(
        "/api/v1/models/churn/versions/",
        upload_payload(
            artifact,
            filename=filename,
            framework=framework,
            reference=sklearn_model.reference_csv,
        ),
        format="multipart",
    )
    assert response.status_code == 201, response.content

    version = version_validate(version_id=ModelVersion.objects.get().pk)

    assert version.state == VersionState.VALIDATED, version.validation_report
    fmt = "joblib" if framework == "sklearn" else "skops"
    expected = loader_decision(fmt, version.validation_report["scan"]["skops_trusted"])
    assert version.loader == expected == version.validation_report["loader"]
    if framework == "skops":
        # Only what the scan judged against the list (skops trusts its own defaults too:
        # every type it would construct was checked by the walk, defaults included).
        from registry.modelkit.allowlist import is_allowed

        trusted = version.loader["skops_trusted"]
        assert all(is_allowed(*t.rsplit(".", 1)) for t in trusted)
        assert "sklearn.pipeline.Pipeline" in version.validation_report["scan"]["globals_seen"]
