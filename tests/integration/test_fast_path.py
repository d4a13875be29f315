"""The fast signing path's CMS: canonical DER that pyHanko, OpenSSL and poppler accept."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from io import BytesIO
from pathlib import Path

import pytest
from asn1crypto import cms, pem
from pyhanko.pdf_utils.reader import PdfFileReader

from daemon.hsm import SigningPool
from daemon.pdf.cms import SignedDataTemplate, TemplateError
from daemon.pdf.validation import validate_pdf_async
from daemon.stages import ORDER
from tests.hsm_fixtures import DevHsm
from tests.integration.test_pades import SCHOOL, sign_through


@pytest.fixture
async def issued(dev_hsm: DevHsm, signing_pool, homeroom_pdf: bytes) -> bytes:
    pool: SigningPool = await signing_pool(workers=2)
    return await sign_through(pool, dev_hsm, homeroom_pdf, ORDER)


def embedded(pdf: bytes) -> list[tuple[bytes, bytes]]:
    """(CMS DER as stored in /Contents, the bytes its /ByteRange covers) per signature."""
    reader = PdfFileReader(BytesIO(pdf))
    out = []
    for sig in reader.embedded_signatures:
        start, first, second, length = (int(x) for x in sig.sig_object["/ByteRange"])
        covered = pdf[start : start + first] + pdf[second : second + length]
        out.append((bytes(sig.sig_object["/Contents"]), covered))
    return out


async def test_cms_is_canonical_der_with_exact_size(issued: bytes) -> None:
    signatures = embedded(issued)
    assert len(signatures) == 3
    for der, covered in signatures:
        # The reserved size is the template's exact size: no zero padding to strip.
        info = cms.ContentInfo.load(der)
        assert info.dump(force=True) == der  # asn1crypto re-encodes it byte for byte
        signer = info["content"]["signer_infos"][0]
        attrs = {a["type"].native: a["values"][0].native for a in signer["signed_attrs"]}
        assert attrs["message_digest"] == hashlib.sha256(covered).digest()
        assert "signing_time" not in attrs  # PAdES: the time is the dictionary's /M
        assert "signing_certificate_v2" in attrs


async def test_openssl_parses_and_verifies_every_signature(
    issued: bytes, dev_hsm: DevHsm, tmp_path: Path
) -> None:
    roots = tmp_path / "roots.pem"
    roots.write_bytes(b"".join(pem.armor("CERTIFICATE", c.dump()) for c in dev_hsm.trust_roots))
    for n, (der, covered) in enumerate(embedded(issued)):
        sig, content = tmp_path / f"sig{n}.der", tmp_path / f"content{n}.bin"
        sig.write_bytes(der)
        content.write_bytes(covered)
        parsed = await _run("openssl", "asn1parse", "-inform", "DER", "-in", str(sig))
        assert parsed.returncode == 0, parsed.stderr
        verified = await _run(
            "openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(sig),
            "-content", str(content), "-CAfile", str(roots), "-purpose", "any",
            "-out", "/dev/null",
        )  # fmt: skip
        assert verified.returncode == 0, verified.stderr
        assert "Verification successful" in verified.stderr


async def test_pdfsig_accepts_every_signature(issued: bytes, tmp_path: Path) -> None:
    path = tmp_path / "issued.pdf"
    path.write_bytes(issued)
    result = await _run("pdfsig", str(path))
    assert result.stdout.count("Signature Validation: Signature is Valid.") == 3, result.stdout
    assert "Total document signed" in result.stdout


async def test_fast_path_keeps_the_certification_and_the_lock(
    issued: bytes, dev_hsm: DevHsm
) -> None:
    reports = await validate_pdf_async(issued, dev_hsm.trust_roots, expected=3)
    assert all(r.bottom_line for r in reports)
    assert [r.docmdp_level for r in reports] == ["FILL_FORMS", None, "NO_CHANGES"]
    assert [r.modification_level for r in reports] == ["FORM_FILLING", "FORM_FILLING", "NONE"]


async def test_template_refuses_values_of_the_wrong_length(signing_pool, dev_hsm: DevHsm) -> None:
    pool: SigningPool = await signing_pool(workers=1)
    cert = await pool.certificate(dev_hsm.key(SCHOOL, "GV-0001"))
    template = SignedDataTemplate.for_signer(cert, [])
    digest = hashlib.sha256(b"x").digest()
    with pytest.raises(TemplateError):
        template.assemble(digest[:31], bytes(template.signature_bytes))
    with pytest.raises(TemplateError):
        template.assemble(digest, bytes(template.signature_bytes - 1))
    assert len(template.assemble(digest, bytes(template.signature_bytes))) == template.size


async def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, args, capture_output=True, text=True, timeout=60, check=False
    )
