import base64
import binascii
import hashlib
import itertools
import json
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.errors import InvalidMessage
from daemon.messages import decode_base64, decode_sign_request

PDF = b"%PDF-1.7 sample"


def _body(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "type": "hocba.sign_request.v1",
        "request_id": str(uuid.uuid4()),
        "school_id": "31000123",
        "record": {
            "record_id": "2025-2026-5A-07",
            "student_id": "3100012300007",
            "academic_year": "2025-2026",
            "grade": 5,
            "class_name": "5A",
            "submission_round": 1,
        },
        "stage": "homeroom_teacher",
        "signer_id": "GV-0042",
        "document": {
            "sha256": hashlib.sha256(PDF).hexdigest(),
            "content_b64": base64.b64encode(PDF).decode(),
        },
        "consent": "a.b.c",
        "requested_at": "2026-05-20T08:00:00+07:00",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def _decode(body: dict[str, object], key: str = "sign.31000123"):
    return decode_sign_request(json.dumps(body).encode(), key)


def test_the_contract_example_decodes() -> None:
    request = _decode(_body())
    assert request.record.grade == 5
    assert request.document is not None and request.document.inline_bytes() == PDF


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"type": "hocba.sign_request.v3"}, "type"),
        ({"stage": "vice_principal"}, "stage"),
        ({"extra": 1}, "extra"),
        ({"request_id": "not-a-uuid"}, "request_id"),
        ({"school_id": "31000123/../x"}, "school_id"),
        ({"consent": None}, "consent"),
        ({"document": None}, "homeroom_teacher needs a document"),
        ({"stage": "principal"}, "drop document"),
        ({"document": {"sha256": "AB" * 32, "content_b64": "eA=="}}, "sha256"),
        ({"document": {"sha256": "ab" * 32}}, "exactly one"),
    ],
)
def test_a_broken_request_is_an_invalid_message_saying_where(changes, where: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        _decode(_body(**changes))
    assert where in caught.value.message


def test_the_routing_key_must_name_the_body_school() -> None:
    with pytest.raises(InvalidMessage, match="Routing key"):
        _decode(_body(), key="sign.31000999")


def test_the_decode_error_keeps_the_raw_bytes() -> None:
    with pytest.raises(InvalidMessage) as caught:
        decode_sign_request(b"\xff\xfe", "sign.31000123")
    assert caught.value.raw == b"\xff\xfe"


def test_bad_base64_is_an_invalid_message() -> None:
    request = _decode(_body(document={"sha256": "ab" * 32, "content_b64": "***"}))
    assert request.document is not None
    with pytest.raises(InvalidMessage):
        request.document.inline_bytes()


# The machine is shared: judge inputs, not how fast they are drawn.
lenient = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@lenient
@given(st.binary(max_size=2048))
def test_any_bytes_either_decode_or_are_an_invalid_message(body: bytes) -> None:
    try:
        decode_sign_request(body, "sign.31000123")
    except InvalidMessage:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


@lenient
@given(st.dictionaries(st.sampled_from(sorted(_body())), json_values, max_size=12))
def test_any_json_object_either_decodes_or_is_an_invalid_message(partial: dict) -> None:
    body = {**_body(), **partial}
    try:
        _decode(body)
    except InvalidMessage as exc:
        assert exc.message


def _strict_binascii(text: str) -> bytes | str:
    """The decoder before pybase64's fast path: what the verdicts must stay."""
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        return "refused"


def _decoded(text: str) -> bytes | str:
    try:
        return decode_base64(text)
    except InvalidMessage:
        return "refused"


# The characters that matter to a base64 decoder: the alphabet's edges, both
# alphabets' 62nd and 63rd letters, padding, whitespace, NUL and non-ASCII.
EDGES = "AQgw+/=-_ \n\té\x00"


def test_base64_verdicts_are_binascii_strict_ones_for_every_short_string() -> None:
    for n in range(6):
        for letters in itertools.product(EDGES, repeat=n):
            text = "".join(letters)
            assert _decoded(text) == _strict_binascii(text), text


@lenient
@given(st.text(alphabet="ABCabc019+/=-_ \n\x00é", max_size=40))
def test_base64_verdicts_are_binascii_strict_ones(text: str) -> None:
    assert _decoded(text) == _strict_binascii(text)


@lenient
@given(st.binary(max_size=3000))
def test_encoded_bytes_decode_to_themselves(data: bytes) -> None:
    text = base64.b64encode(data).decode()
    assert decode_base64(text) == data
    # A quantum padded past its end, which only binascii accepts, still decodes as before
    assert _decoded(text + "=") == _strict_binascii(text + "=")
