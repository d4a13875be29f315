"""Property-based fuzzing of the two parsers that see untrusted bytes first: the message
decoder and the PDF intake. Each may only accept, or refuse with its own error type."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.errors import InvalidMessage, NotAPdf
from daemon.messages import decode_sign_request
from daemon.pdf.pades import inspect_pdf
from tests.corpus.generate import plain_pdf

CORPUS = Path(__file__).parents[1] / "corpus"
ROUTING_KEY = "sign.31000123"
MAX_BYTES = 1024 * 1024
lenient = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=300)


def _decodes_or_refuses(body: bytes, routing_key: str = ROUTING_KEY) -> None:
    try:
        decode_sign_request(body, routing_key)
    except InvalidMessage as exc:
        assert exc.message and exc.raw == body


@lenient
@given(depth=st.integers(min_value=1, max_value=200_000), opener=st.sampled_from("[{"))
def test_json_nested_at_any_depth_is_decoded_or_refused(depth: int, opener: str) -> None:
    body = ('{"a":' * depth + "1" + "}" * depth) if opener == "{" else "[" * depth + "]" * depth
    _decodes_or_refuses(body.encode())


@lenient
@given(st.integers(min_value=1, max_value=20_000))
def test_numbers_of_any_length_are_decoded_or_refused(digits: int) -> None:
    body = {"type": "hocba.sign_request.v1", "record": {"grade": 0}}
    text = json.dumps(body).replace('"grade": 0', '"grade": ' + "9" * digits)
    _decodes_or_refuses(text.encode())


@lenient
@given(st.text(max_size=64), st.binary(max_size=256))
def test_any_routing_key_with_any_body_is_decoded_or_refused(key: str, body: bytes) -> None:
    _decodes_or_refuses(body, key)


@lenient
@given(st.sampled_from(sorted((CORPUS / "bodies").iterdir())), st.data())
def test_mutated_corpus_bodies_are_decoded_or_refused(path: Path, data: st.DataObject) -> None:
    body = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(0, 8))):
        if body:
            at = data.draw(st.integers(0, len(body) - 1))
            body[at] = data.draw(st.integers(0, 255))
    _decodes_or_refuses(bytes(body))


# --- PDF intake --------------------------------------------------------------------

SEEDS = [plain_pdf()] + [p.read_bytes() for p in sorted((CORPUS / "pdfs").glob("*.pdf"))]
TOKENS = [
    b"<<", b">>", b"[", b"]", b"obj", b"endobj", b"stream", b"endstream", b"xref",
    b"trailer", b"startxref", b"/Length 99999999", b"/Type /Pages", b"/Kids [1 0 R]",
    b"/Count -1", b"/Count 99999999999999999999", b"/Root 1 0 R", b"/Encrypt 1 0 R",
    b"9999999 0 R", b"%%EOF", b"/Filter /FlateDecode", b"(", b")", b"<", b">", b"\\",
    b"[" * 2000, b"<<" * 2000,
]  # fmt: skip


def mutate(
    draw: st.DrawFn, pdf: bytes, rounds: int = 6, longest_cut: int = 64, duplicate: bool = True
) -> bytes:
    """`pdf` with up to `rounds` bytes flipped, tokens inserted, runs cut or copied."""
    out = bytearray(pdf)
    actions = ["flip", "insert", "delete", "truncate"] + (["duplicate"] if duplicate else [])
    for _ in range(draw(st.integers(1, rounds))):
        at = draw(st.integers(0, len(out)))
        action = draw(st.sampled_from(actions))
        if action == "flip" and at < len(out):
            out[at] = draw(st.integers(0, 255))
        elif action == "insert":
            out[at:at] = draw(st.sampled_from(TOKENS))
        elif action == "delete":
            del out[at : at + draw(st.integers(1, longest_cut))]
        elif action == "truncate":
            del out[at:]
        elif action == "duplicate":
            out[at:at] = out[max(0, at - 200) : at]
    return bytes(out)


@st.composite
def mutated_pdfs(draw: st.DrawFn) -> bytes:
    return mutate(draw, draw(st.sampled_from(SEEDS)))


@lenient
@given(mutated_pdfs())
def test_mutated_pdfs_are_accepted_or_refused_as_not_a_pdf(pdf: bytes) -> None:
    try:
        inspect_pdf(pdf, MAX_BYTES)
    except NotAPdf as exc:
        assert exc.message


@lenient
@given(st.binary(max_size=4096))
def test_random_bytes_after_the_magic_are_refused_as_not_a_pdf(tail: bytes) -> None:
    try:
        inspect_pdf(b"%PDF-1.7\n" + tail, MAX_BYTES)
    except NotAPdf:
        pass
