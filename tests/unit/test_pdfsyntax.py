"""PDF objects from bytes and back (daemon/pdf/syntax.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.pdf.syntax import PdfObject, Ref, Unsupported, read_object, serialize

# Reading


@pytest.mark.parametrize(
    ("source", "value"),
    [
        (b"<</Type/Sig/Size 12>>", {"Type": "Sig", "Size": 12}),
        (b"  % a comment\n [ 3 0 R 4 -5 +6 2.5 -.5 ]", [Ref(3, 0), 4, -5, 6, 2.5, -0.5]),
        (b"/A#20b#23", "A b#"),
        (b"/", ""),
        (b"(a (nested) \\(escaped\\) \\n \\053 \\7)", b"a (nested) (escaped) \n + \x07"),
        (b"(line\r\nbreaks\rand \\\r\ncontinued)", b"line\nbreaks\nand continued"),
        (b"<48 65 6c 6C 6>", b"Hell`"),
        (b"<48656c6C6>", b"Hell`"),
        (b"<\n4865\r\n6c6c\x006f\t>", b"Hello"),
        (b"<>", b""),
        (b"[<41><4 2>]", [b"A", b"B"]),
        (b"[true false null]", [True, False, None]),
        (b"<< /K [ << /V 1 0 R >> ] >>", {"K": [{"V": Ref(1, 0)}]}),
    ],
)
def test_objects_are_read(source: bytes, value: object) -> None:
    assert read_object(source) == (value, len(source))


@pytest.mark.parametrize(
    "source",
    [
        *(b"<</A>>", b"<<1 2>>", b"[1 2", b"(open", b"]", b"<</A 1]", b"<zz>", b"1e5"),
        *(b"[1 0 obj]", b"[" * 40, b"(\\", b"<</A 1 /A 2>>"),
        *(b"<4142", b"<", b"<41 4g>", b"<41(42)>", b"<41<42>>", b"<+41>", b"<4142 %>"),
        # Nothing is read from inside a comment, not even once what follows it fails.
        *(b"%x 5\n)", b"[1 %c 2]\n)", b"%x 5\n<zz>", b"<< /A 1 % >>\n"),
    ],
)
def test_malformed_objects_are_refused(source: bytes) -> None:
    with pytest.raises(Unsupported):
        read_object(source)


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_any_bytes_are_read_or_refused(source: bytes) -> None:
    try:
        read_object(source)
    except Unsupported:
        pass


# A hex string: the digits whole (a signature's /Contents) or with whitespace anywhere
# between them, read as the PDF reference reads them (a missing last digit is 0).

_HEX = b"0123456789abcdefABCDEF"


@given(
    st.lists(
        st.tuples(
            st.sampled_from(_HEX),
            st.binary(max_size=2).map(
                lambda b: b.translate(bytes(b" \t\n\r\x0c\x00"[n % 6] for n in range(256)))
            ),
        ),
        max_size=40,
    )
)
def test_hex_strings_are_read_whatever_their_whitespace(parts: list[tuple[int, bytes]]) -> None:
    digits = bytes(digit for digit, _ in parts)
    source = b"<" + b"".join(bytes([digit]) + space for digit, space in parts) + b">"
    even = digits + b"0" if len(digits) % 2 else digits
    assert read_object(source) == (bytes.fromhex(even.decode()), len(source))


# Writing

names = st.text(st.characters(max_codepoint=255, exclude_characters="\x00"), max_size=8)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.decimals(-(10**6), 10**6, places=4).map(float),
    st.binary(max_size=16),
    names,
    st.builds(Ref, st.integers(1, 10**6), st.integers(0, 65535)),
)
objects = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(names, children, max_size=4),
    max_leaves=12,
)


@given(objects)
def test_what_is_written_reads_back(value: PdfObject) -> None:
    text = serialize(value)
    assert read_object(text) == (value, len(text))


@pytest.mark.parametrize("value", [1e-7, float("inf"), float("nan"), 1e22])
def test_numbers_pdf_cannot_write_are_refused(value: float) -> None:
    with pytest.raises(Unsupported):
        serialize(value)
