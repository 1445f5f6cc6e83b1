"""The gateway's JSON parser (``gateway.inputs.json_loads``) is stdlib's ``json.loads``: the same
value for every body, or the same exception, whichever parser did the work."""

from __future__ import annotations

import json
import math
import random
import struct
from typing import Any

import pytest

from gateway.inputs import InputRefused, json_body_parse, json_loads

# Bodies where a fast parser could part from stdlib; each one's stdlib answer is pinned.
BODIES = [
    b'{"a": NaN}',
    b'{"a": [Infinity, -Infinity]}',
    b'{"a": 1e400}',  # too large for a float: inf, as stdlib reads it
    b'{"a": -1e400}',
    b'{"a": 1e-400}',
    b'{"a": -0}',
    b'{"a": -0.0}',
    b'{"a": 123456789012345678901234567890}',  # beyond 64 bits: an int, not a float
    b'{"a": -9223372036854775809}',
    b'{"a": 18446744073709551615}',
    b'{"a": 0.1000000000000000055511151231257827}',
    b'{"a": 4.9e-324}',
    b'{"a": 1.7976931348623159e308}',
    b'{"a": "\\ud800"}',  # a lone surrogate: stdlib keeps it
    b'{"a": "\\udc00\\ud800"}',
    b'{"a": "\\ud83d\\ude00"}',
    b'{"a": "\xed\xa0\x80"}',  # a surrogate encoded in UTF-8: stdlib reads it
    b'\xef\xbb\xbf{"a": 1}',  # a UTF-8 BOM
    '{"a": 1}'.encode("utf-16"),  # stdlib detects UTF-16 and UTF-32
    b'{"a": 1, "a": 2}',  # the last key wins
    b'{"a": "\\u0000", "\\u00e9": "\\/"}',
    b' \t{"a": [1, 2]}\r\n',
    b'"x"',
    b"[]",
    b"{}",
    b'{"a": "\x7f"}',
    b'{"\xc3\xa9": 2}',
    b'{"instances": ' + b"[" * 300 + b"]" * 300 + b"}",  # deeper than pydantic-core goes
]

# Not JSON to either parser.
INVALID = [
    b"",
    b" ",
    b"[",
    b'{"a": "x\ty"}',  # a raw control character in a string
    b'{"a": "\xff"}',  # not UTF-8
    b'{"a": 01}',
    b'{"a": 1.}',
    b'{"a": .5}',
    b'{"a": +1}',
    b'{"a": nan}',
    b'{"a": [1, 2,]}',
    b"{'a': 1}",
    b'{"a": 1}x',
    b'{"a": 1}\x00',
]


def _stdlib(body: bytes) -> Any:
    try:
        return json.loads(body)
    except RecursionError:
        return RecursionError
    except (ValueError, UnicodeDecodeError) as exc:
        return type(exc)


def _ours(body: bytes) -> Any:
    try:
        return json_loads(body)
    except RecursionError:
        return RecursionError
    except (ValueError, UnicodeDecodeError) as exc:
        return type(exc)


def _same(a: Any, b: Any) -> bool:
    """Equal values of equal types all the way down (NaN equal to NaN, 1 not equal to 1.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize("body", BODIES + INVALID)
def test_every_body_parses_as_stdlib_parses_it(body: bytes) -> None:
    assert _same(_ours(body), _stdlib(body)), body[:60]


def test_floats_parse_to_the_same_double() -> None:
    rng = random.Random(18)
    texts = []
    for _ in range(20_000):
        value = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
        if math.isfinite(value):
            texts += [repr(value), f"{value:.20e}", f"{value:.12g}", f"{value:.30g}"]
    body = ("[" + ",".join(texts) + "]").encode()
    assert _same(json_loads(body), json.loads(body))


def test_the_refusals_are_those_of_stdlib() -> None:
    deep = b'{"instances": ' + b"[" * 5_000 + b"]" * 5_000 + b"}"
    with pytest.raises(InputRefused) as too_deep:
        json_body_parse(deep)
    assert too_deep.value.code == "json_too_deep"
    with pytest.raises(InputRefused) as invalid:
        json_body_parse(b'{"a": 1,}')
    try:
        json.loads(b'{"a": 1,}')
    except ValueError as exc:
        assert invalid.value.message == f"request body is not valid JSON: {exc}"
    with pytest.raises(InputRefused) as nul:
        json_body_parse(b'{"instances": [["a\\u0000"]]}')
    assert nul.value.code == "nul_character"
    assert json_body_parse(b'{"instances": [[NaN, 1]]}')["instances"][0][1] == 1


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-be"])
def test_a_nul_escape_in_a_utf16_or_utf32_body_is_refused_as_in_utf8(encoding: str) -> None:
    """stdlib reads these encodings, where the escape's bytes are not b'\\u0000'."""
    with pytest.raises(InputRefused) as nul:
        json_body_parse('{"instances": [["a\\u0000"]]}'.encode(encoding))
    assert (nul.value.code, nul.value.details) == ("nul_character", {"field": "instances[0][0]"})
    assert json_body_parse('{"instances": [["a"]]}'.encode(encoding)) == {"instances": [["a"]]}
