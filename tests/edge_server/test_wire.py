"""Bodies parse exactly as the standard library parses them, with or without orjson."""

from __future__ import annotations

import json
import math

import pytest

from edgerec.edge_server import wire
from edgerec.edge_server.errors import MalformedBodyError
from edgerec.sdk.http_errors import STRICT_DECODER

# The standard library made strict (no NaN or Infinity, no float overflow): what both services parse with.
STDLIB = STRICT_DECODER

BODIES = [
    b'{"a": 1, "a": 2}',
    b'{"big": 123456789012345678901234567890, "neg": -9223372036854775809}',
    b'{"u64": 18446744073709551615, "f": 1e308, "g": -1e-400, "h": 0.1}',
    b'{"s": "\\ud800", "t": "\\u00e9", "z": "\\u0000"}',
    b'[' * 32 + b']' * 32,
    b'{"x": [1.5, 2, -0, -0.0, 1E2, 3.4028235e38]}',
    "{\"é\": \"ü\"}".encode(),
]

BAD = [b'{"a": NaN}', b'{"f": 1e400}', b'[-1e999]', b"[1, 2,]", b'{"a": 01}', b"\xef\xbb\xbf{}", b'{"a": "\x01"}',
       b"{} x", b"\xff", b"[" * 5000 + b"]" * 5000, b""]


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (a == b and math.copysign(1, a) == math.copysign(1, b)) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("body", BODIES)
def test_documents_parse_as_the_standard_library_does(body):
    assert _same(wire.loads(body), STDLIB.decode(body.decode("utf-8")))
    assert _same(wire.loads(memoryview(body)), STDLIB.decode(body.decode("utf-8")))


@pytest.mark.parametrize("body", BAD)
def test_refusals_carry_the_standard_library_message(body):
    with pytest.raises(MalformedBodyError) as err:
        wire.loads(body)
    try:
        STDLIB.decode(body.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        assert err.value.detail == f"not valid JSON ({str(exc)[:200]})"
    else:
        pytest.fail("the standard library accepts it")


@pytest.mark.parametrize("depth", [33, 300, 799, 801])
def test_nesting_deeper_than_the_limit_is_refused_whichever_parser_reads_it(depth):
    body = b'{"a": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
    with pytest.raises(MalformedBodyError, match="nested deeper than 32 levels") as err:
        wire.loads(body)
    assert err.value.field == "body"
    assert wire.loads(b'{"a": ' + b"[" * 31 + b"]" * 31 + b"}")


def test_answers_are_the_same_json():
    doc = {"model": "ctr", "items": [{"item": 7, "score": 3.5e-05, "rank": 1}, {"item": "é", "score": 1e16}],
           "big": 2**70}
    assert json.loads(wire.dumps_bytes(doc)) == json.loads(wire.dumps(doc)) == doc
