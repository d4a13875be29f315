"""Records from real-world PDF producers, signed by the fast paths and by pyHanko alone.

Each PDF in tests/corpus/producers/ (its README.md says who made it and how) passes
intake or is refused as the tables below expect, is signed through all three stages
by prepare_and_sign, and must then validate as the same file signed by the pyHanko
path alone, satisfy pdfsig and `qpdf --check`, look as it did, and show a byte
appended after the seal. The tables record which stage takes the fast path, so that
a change in what the fast paths handle shows here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.errors import NotAPdf
from daemon.pdf import pades, validation
from daemon.pdf.reader import Unsupported
from daemon.stages import ORDER
from tests.unit.signing_kit import (
    Pki,
    assert_validates_as_pyhanko,
    fill_field,
    make_pki,
    sign,
)

CORPUS = Path(__file__).parents[1] / "corpus" / "producers"
MAX_BYTES = 1024 * 1024

# What each stage does with each producer's file: FAST, or the Unsupported message
# (in part) with which it falls back to pyHanko.
FAST = "fast"
ALL_FAST = (FAST, FAST, FAST)
PATHS: dict[str, tuple[str, str, str]] = {
    "cairo.pdf": ALL_FAST,
    "chromium.pdf": ALL_FAST,
    "ghostscript_pdf14.pdf": ALL_FAST,
    "ghostscript_pdf17.pdf": ALL_FAST,
    "ghostscript_pdfa2b.pdf": ALL_FAST,
    "ghostscript_ps2pdf15.pdf": ALL_FAST,
    "img2pdf.pdf": ALL_FAST,
    "itext5.pdf": ALL_FAST,
    "itext5_full_compression.pdf": ALL_FAST,
    "jspdf.pdf": ALL_FAST,
    "libreoffice.pdf": ALL_FAST,
    "libreoffice_form.pdf": ("The catalogue already has /AcroForm.", FAST, FAST),
    "libreoffice_pdfa2b.pdf": ALL_FAST,
    "pdfbox.pdf": ALL_FAST,
    "pdfkit.pdf": ALL_FAST,
    "pdflib.pdf": ALL_FAST,
    "pdflib_form.pdf": ("The catalogue already has /AcroForm.", FAST, FAST),
    "pdftk.pdf": ALL_FAST,
    "pikepdf_linearized.pdf": ALL_FAST,
    "pikepdf_object_streams.pdf": ALL_FAST,
    "poppler_pdfseparate.pdf": ALL_FAST,
    "pymupdf.pdf": ALL_FAST,
    "pymupdf_incremental.pdf": ALL_FAST,
    "pypdf_incremental.pdf": ALL_FAST,
    "qpdf_linearized.pdf": ALL_FAST,
    "reportlab.pdf": ALL_FAST,
    "weasyprint.pdf": ALL_FAST,
    "wkhtmltopdf.pdf": ALL_FAST,
}
REFUSED: dict[str, str] = {
    "refused_encrypted.pdf": "The document is encrypted.",
    "refused_signed_elsewhere.pdf": "The document is already signed.",
    # Its trailer /Size (19) is below its highest object (33): an update numbered
    # from /Size would overwrite page 2's font (README.md says more).
    "poppler_pdfunite.pdf": "The document's trailer /Size (19) is not above its highest",
}


@dataclass(frozen=True)
class Issued:
    """A producer's file signed through every stage by prepare_and_sign."""

    original: bytes
    revisions: list[bytes]  # after each stage
    paths: list[str]  # per stage: FAST, or why it fell back to pyHanko
    fast_as_written: list[bool]  # each fast stage gave the fast path's bytes

    @property
    def signed(self) -> bytes:
        return self.revisions[-1]


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.fixture(scope="module")
def issue(pki: Pki) -> Callable[[str], Issued]:
    """Signs a corpus file once per module, however many tests ask for it."""
    issued: dict[str, Issued] = {}

    def make(name: str) -> Issued:
        if name not in issued:
            issued[name] = _issue((CORPUS / name).read_bytes(), pki)
        return issued[name]

    return make


def _issue(original: bytes, pki: Pki) -> Issued:
    pdf, revisions, paths, as_written = original, [], [], []
    for stage in ORDER:
        signed = sign(pdf, (stage,), pki)
        try:
            fast = fill_field(pdf, stage, pki)
        except Unsupported as exc:
            paths.append(str(exc))
        else:
            paths.append(FAST)
            as_written.append(signed == fast)
        revisions.append(pdf := signed)
    return Issued(original, revisions, paths, as_written)


# Intake


def test_every_file_has_an_expectation() -> None:
    files = {path.name for path in CORPUS.glob("*.pdf")}
    assert files == set(PATHS) | set(REFUSED)
    assert not set(PATHS) & set(REFUSED)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_intake_refuses(name: str) -> None:
    with pytest.raises(NotAPdf, match=re.escape(REFUSED[name])):
        pades.inspect_pdf((CORPUS / name).read_bytes(), MAX_BYTES)


@pytest.mark.parametrize("name", sorted(PATHS))
def test_intake_accepts(name: str) -> None:
    pades.inspect_pdf((CORPUS / name).read_bytes(), MAX_BYTES)


# Signing


@pytest.mark.parametrize("name", sorted(PATHS))
def test_each_stage_takes_the_expected_path(name: str, issue: Callable[[str], Issued]) -> None:
    issued = issue(name)
    expected = PATHS[name]
    taken = [
        path == want if want == FAST else path != FAST and want in path
        for path, want in zip(issued.paths, expected, strict=True)
    ]
    assert all(taken), f"stages took {issued.paths}, expected {list(expected)}"
    assert all(issued.fast_as_written)  # prepare_and_sign wrote the fast path's bytes
    for before, after in zip(
        [issued.original, *issued.revisions[:-1]], issued.revisions, strict=True
    ):
        assert after.startswith(before)  # incremental updates only


@pytest.mark.parametrize("name", sorted(PATHS))
def test_signatures_validate_as_pyhanko_signed_ones(
    name: str, issue: Callable[[str], Issued], pki: Pki
) -> None:
    issued = issue(name)
    assert_validates_as_pyhanko(issued.original, issued.signed, pki)


# What other tools and a reader see


@pytest.mark.parametrize("name", sorted(PATHS))
def test_pdfsig_accepts_every_signature(
    name: str, issue: Callable[[str], Issued], tmp_path: Path
) -> None:
    path = tmp_path / name
    path.write_bytes(issue(name).signed)
    pdfsig = subprocess.run(["pdfsig", str(path)], capture_output=True, text=True, timeout=60)
    assert pdfsig.stdout.count("Signature Validation: Signature is Valid.") == 3, pdfsig.stdout
    assert "Total document signed" in pdfsig.stdout


@pytest.mark.parametrize("name", sorted(PATHS))
def test_qpdf_finds_nothing_wrong(
    name: str, issue: Callable[[str], Issued], tmp_path: Path
) -> None:
    if shutil.which("qpdf") is None:
        pytest.skip("qpdf is not installed")
    path = tmp_path / name
    path.write_bytes(issue(name).signed)
    check = subprocess.run(["qpdf", "--check", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("name", sorted(PATHS))
def test_the_signed_record_looks_as_it_did(
    name: str, issue: Callable[[str], Issued], tmp_path: Path
) -> None:
    issued = issue(name)
    original = _rendered(issued.original, tmp_path / "original")
    assert original
    assert _rendered(issued.signed, tmp_path / "signed") == original


def _rendered(pdf: bytes, folder: Path) -> list[bytes]:
    """Every page as a small grey image, by poppler."""
    folder.mkdir()
    (folder / "in.pdf").write_bytes(pdf)
    subprocess.run(
        ["pdftoppm", "-r", "20", "-gray", str(folder / "in.pdf"), str(folder / "page")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return [page.read_bytes() for page in sorted(folder.glob("page*.pgm"))]


@pytest.mark.parametrize("name", sorted(PATHS))
def test_a_byte_after_the_seal_is_detected(
    name: str, issue: Callable[[str], Issued], pki: Pki
) -> None:
    signed = issue(name).signed
    reports = validation.validate_pdf(signed, [pki.root], expected=3)

    # When one byte follows the seal's %%EOF
    changed = validation.validate_pdf(signed + b"x", [pki.root], expected=3)

    # Then the seal no longer covers the whole file; the earlier signatures are as they were
    assert reports[-1].coverage == "ENTIRE_FILE"
    assert changed[-1].coverage == "ENTIRE_REVISION"
    assert changed[:-1] == reports[:-1]
