"""The signature timestamp spliced into a CMS at the DER level, against asn1crypto's rewrite."""

from __future__ import annotations

import binascii
import hashlib

import pytest
from asn1crypto import cms

from daemon.ltv.timestamps import CmsSplice, contents_slot, signature_value, with_token
from daemon.stages import Stage
from tests.unit.ltv_kit import LtvServices
from tests.unit.signing_kit import make_pki, record, sign


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> LtvServices:
    return LtvServices(tmp_path_factory.mktemp("splice-pki"))


@pytest.fixture(scope="module")
def signed_cms() -> bytes:
    """A fresh signature's /Contents (its CMS, then the zeros padding the slot)."""
    original = record()
    signed = sign(original, (Stage.HOMEROOM_TEACHER,), make_pki())
    slot = contents_slot(signed, len(original))
    return binascii.unhexlify(signed[slot.start : slot.end])


def test_the_splice_writes_what_asn1crypto_writes(signed_cms: bytes, services: LtvServices) -> None:
    # Given a signature and a TSA token over its value
    splice = CmsSplice.of(signed_cms)
    parsed = cms.ContentInfo.load(signed_cms, strict=False)
    assert splice.signature == signature_value(parsed)
    token = services.token(hashlib.sha256(splice.signature).digest())

    # When the token is spliced in at the DER level
    spliced = splice.with_token(token)

    # Then the bytes are those asn1crypto writes by decoding and encoding the CMS again
    assert spliced == with_token(parsed, cms.ContentInfo.load(token))
    # and the result reads back: the signed part untouched, the token its unsigned attribute
    again = cms.ContentInfo.load(spliced)["content"]["signer_infos"][0]
    original = parsed["content"]["signer_infos"][0]
    assert again["signed_attrs"].dump() == original["signed_attrs"].dump()
    assert again["signature"].native == splice.signature
    (attribute,) = again["unsigned_attrs"]
    assert attribute["type"].native == "signature_time_stamp_token"
    assert attribute["values"][0].dump() == token


def test_a_cms_already_timestamped_is_left_to_asn1crypto(
    signed_cms: bytes, services: LtvServices
) -> None:
    splice = CmsSplice.of(signed_cms)
    stamped = splice.with_token(services.token(hashlib.sha256(splice.signature).digest()))
    with pytest.raises(ValueError, match="unsigned attributes"):
        CmsSplice.of(stamped)


@pytest.mark.parametrize(
    "damage",
    [
        lambda der: der[:40],  # cut short: a length overruns its container
        lambda der: b"\x31" + der[1:],  # a SET where the ContentInfo SEQUENCE is
        lambda der: der[:4] + b"\x06\x09" + bytes(9) + der[15:],  # not SignedData
    ],
    ids=["truncated", "wrong_outer_tag", "not_signed_data"],
)
def test_an_unexpected_cms_is_refused(signed_cms: bytes, damage) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        CmsSplice.of(damage(signed_cms))
