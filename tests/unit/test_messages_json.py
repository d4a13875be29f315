"""`messages.loads` reads every body exactly as `json.loads` does, faster where it can."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic_core import from_json

from daemon.errors import InvalidMessage
from daemon.messages import decode_sign_request, loads

# Inputs where JSON parsers are known to part ways: encodings, escapes, numbers at
# their limits, whitespace, nesting, trailing bytes.
EDGES = [
    b"",
    b'{"a": ',
    b'{"a": "\xff"}',
    b'\xef\xbb\xbf{"a": 1}',
    '{"a": "ý"}'.encode("utf-16"),
    '{"a": 1}'.encode("utf-32-le"),
    b'{"a": NaN}',
    b"Infinity",
    b"-Infinity",
    b'{"a": 1, "a": 2}',
    b"[" * 5000 + b"]" * 5000,
    b"[" * 150 + b"]" * 150,
    b'{"a": 1} x',
    b'"\\ud800"',
    b'"\\udfff\\ud800"',
    b'"\xed\xa0\x80"',
    b'"\xf4\x90\x80\x80"',
    b'"\xc0\xaf"',
    b'"\\ud83d\\ude00"',
    b'"\\u0000"',
    b'{"a": "\x01"}',
    b'{"a": "\t"}',
    b"-0",
    b"-0.0",
    b"01",
    b"1.",
    b".5",
    b"1E+2",
    b"1e400",
    b"5e-324",
    b"2.2250738585072011e-308",
    b"1.7976931348623157e308",
    b"123456789012345678901234567890",
    b"7" * 4300,
    b"7" * 4301,
    b"\r\n {} \t\n",
    b"\x0c{}",
    b"\xc2\xa0{}",
    b"{}\x00",
    b'{"a": 1,}',
    b"[1,]",
    b"'a'",
    b"nul",
]


def _outcome(parse: Any, body: bytes) -> tuple[str, str]:
    try:
        return "value", repr(parse(body))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        return "refused", type(exc).__name__


@pytest.mark.parametrize("body", EDGES)
def test_a_body_reads_as_json_loads_reads_it(body: bytes) -> None:
    assert _outcome(loads, body) == _outcome(json.loads, body)


def test_the_fast_parser_is_the_one_that_reads_a_plain_body() -> None:
    # Else this module's speed claim (and its reason to exist) would be untrue.
    body = json.dumps({"document": {"content_b64": "QUJD" * 50_000}}).encode()
    assert from_json(body, cache_strings="keys") == json.loads(body)


def test_every_refusal_is_worded_by_the_standard_library() -> None:
    with pytest.raises(InvalidMessage, match=r"^Body is not JSON: Expecting value\.$"):
        decode_sign_request(b'{"a": ', "sign.S1")
    with pytest.raises(InvalidMessage, match=r"^Body is not UTF-8 JSON\.$"):
        decode_sign_request(b'{"a": "\xff"}', "sign.S1")
    with pytest.raises(InvalidMessage, match="RecursionError"):
        decode_sign_request(b"[" * 100_000 + b"]" * 100_000, "sign.S1")
    with pytest.raises(InvalidMessage, match="ValueError"):
        decode_sign_request(b'{"a": ' + b"7" * 5000 + b"}", "sign.S1")


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(value=_json, ascii_only=st.booleans(), indent=st.sampled_from([None, 0, 2]))
def test_generated_documents_read_alike(value: Any, ascii_only: bool, indent: int | None) -> None:
    body = json.dumps(value, ensure_ascii=ascii_only, indent=indent).encode(
        "utf-8", "surrogatepass"
    )
    assert repr(loads(body)) == repr(json.loads(body))
