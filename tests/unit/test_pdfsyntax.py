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
