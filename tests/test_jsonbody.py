"""service.api.jsonbody.loads reads every body as json.loads does: same objects, or the same error."""

import json
import random

import pytest

from service.api.jsonbody import loads

SAME = [
    b'{"a": 1, "b": 2, "a": 3}',  # duplicate keys: the last wins, in the first one's place
    b"-0",
    b"-0.0",
    b"1e-400",
    b"9007199254740993",
    b"2.2250738585072011e-308",
    b"1.7976931348623158e308",
    b"123456789012345678",  # 18 digits: orjson reads it
    b"1234567890123456789",  # 19: json.loads reads it
    b"123456789012345678901234567890",  # past 64 bits: an exact int, not orjson's float
    b"-9223372036854775809",
    b'{"top_k": 100000000000000000000000000001}',
    b'"\\ud83d\\ude00 \\u0000 \\/ \\" caf\\u00e9"',
    b'"\xf0\x9f\x98\x80"',
    b"NaN",
    b'{"x": [Infinity, -Infinity, 1e999]}',
    b'"\\ud800"',  # a lone surrogate: json.loads keeps it (the schema then names the field)
    b"\xef\xbb\xbf{}",  # a BOM
    '{"a": 1}'.encode("utf-16"),
    b" \t\n\r[1, 2.5, true, false, null, {}] \n",
]


@pytest.mark.parametrize("body", SAME)
def test_same_objects_as_json_loads(body):
    got, expected = loads(body), json.loads(body)
    assert repr(got) == repr(expected)  # repr: tells 0 from 0.0 and -0.0, int from float, and NaN equal
    if isinstance(expected, dict):
        assert list(got) == list(expected)


@pytest.mark.parametrize("body", [b'{"user": ', b"[1,]", b'{"a" 1}', b"\xff\xfe{", b'{"a": 1}x', b"[" * 100_000, b"", b"\x00"])
def test_same_error_as_json_loads(body):
    with pytest.raises(Exception) as expected:
        json.loads(body)
    with pytest.raises(type(expected.value)) as got:
        loads(body)
    assert str(got.value) == str(expected.value)


def test_random_number_literals_read_alike():
    rng = random.Random(0)
    for _ in range(20_000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 18))).lstrip("0") or "0"
        dot = rng.randint(1, len(digits))
        text = digits[:dot] + (f".{digits[dot:]}" if dot < len(digits) else "")
        text = rng.choice(["", "-"]) + text + rng.choice(["", f"e{rng.randint(-330, 330)}", f"E+{rng.randint(0, 20)}"])
        assert repr(loads(text.encode())) == repr(json.loads(text)), text
