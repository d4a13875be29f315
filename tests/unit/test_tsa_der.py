"""The TSA's request, answer and tokens read at the DER level, against asn1crypto's reading.

The client writes the TimeStampReq from a template and reads the TimeStampResp by a
DER walk; the seal finds the certificates of the signatures and of their tokens the
same way; the dev TSA answers usual requests from pieces encoded once. Each is
compared with what asn1crypto writes or reads.
"""

from __future__ import annotations

import binascii
import hashlib
import secrets
from datetime import UTC, datetime, timedelta

import pytest
from asn1crypto import algos, cms, core, tsp

from daemon.dev.tsa import POLICY, TimeStampReply
from daemon.errors import TsaUnavailable
from daemon.ltv import der as walk
from daemon.ltv import dss, memo
from daemon.ltv.timestamps import CmsSplice, _token, contents_slot, timestamp_request
from daemon.stages import Stage
from tests.unit.ltv_kit import LtvServices
from tests.unit.signing_kit import make_pki, record, sign


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> LtvServices:
    return LtvServices(tmp_path_factory.mktemp("tsa-der-pki"))


def _asn1crypto_request(digest: bytes, nonce: int | None, **fields: object) -> bytes:
    values: dict[str, object] = {
        "version": "v1",
        "message_imprint": {
            "hash_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
            "hashed_message": digest,
        },
        "cert_req": True,
    }
    if nonce is not None:
        values["nonce"] = nonce
    values.update(fields)
    return bytes(tsp.TimeStampReq(values).dump())


@pytest.mark.parametrize("nonce", [0, 1, 127, 128, 255, 256, 2**62, 2**63 - 1])
def test_the_request_is_the_one_asn1crypto_writes(nonce: int) -> None:
    digest = secrets.token_bytes(32)
    assert timestamp_request(digest, nonce) == _asn1crypto_request(digest, nonce)


def test_a_granted_answer_yields_its_token(services: LtvServices) -> None:
    # Given a request and the dev TSA's answer to it
    digest, nonce = secrets.token_bytes(32), secrets.randbits(63)
    answer = services.authority.respond(timestamp_request(digest, nonce))

    # When the client reads it at the DER level
    token = _token(answer, digest, nonce)

    # Then it is the token asn1crypto finds in the answer, for that imprint and nonce
    parsed = tsp.TimeStampResp.load(answer)
    assert token == parsed["time_stamp_token"].dump()
    info = cms.ContentInfo.load(token)["content"]["encap_content_info"]["content"].parsed
    assert info["message_imprint"]["hashed_message"].native == digest
    assert info["nonce"].native == nonce


def test_a_token_for_another_digest_or_nonce_is_refused(services: LtvServices) -> None:
    digest, nonce = secrets.token_bytes(32), secrets.randbits(63)
    answer = services.authority.respond(timestamp_request(digest, nonce))
    for other_digest, other_nonce in ((secrets.token_bytes(32), nonce), (digest, nonce + 1)):
        with pytest.raises(TsaUnavailable, match="not for the digest and nonce"):
            _token(answer, other_digest, other_nonce)
    # a token without the nonce (the request asked none) does not answer one that did
    unasked = services.authority.respond(_asn1crypto_request(digest, None))
    with pytest.raises(TsaUnavailable, match="not for the digest and nonce"):
        _token(unasked, digest, nonce)


def test_a_refusal_is_tsa_unavailable(services: LtvServices) -> None:
    digest = secrets.token_bytes(32)
    refused = services.authority.respond(_asn1crypto_request(digest, 7, req_policy="1.2.3.4"))
    assert TimeStampReply.load(refused)["status"]["status"].native == "rejection"
    with pytest.raises(TsaUnavailable, match=r"refused the request \(rejection\)"):
        _token(refused, digest, 7)


def test_an_answer_of_another_form_is_read_by_asn1crypto(services: LtvServices) -> None:
    # Given a granted answer re-encoded with a long-form length the walk does not read
    # (indefinite length, which BER allows and DER does not)
    digest, nonce = secrets.token_bytes(32), secrets.randbits(63)
    answer = services.authority.respond(timestamp_request(digest, nonce))
    reply = walk.element(answer)
    ber = b"\x30\x80" + answer[reply.content :] + b"\x00\x00"
    # When and then: the token is still found, by asn1crypto's parse
    token = _token(ber, digest, nonce)
    assert token == tsp.TimeStampResp.load(answer)["time_stamp_token"].dump()
    with pytest.raises(TsaUnavailable):
        _token(b"\x30\x03\x02\x01", digest, nonce)


@pytest.fixture(scope="module")
def stamped_cms(services: LtvServices) -> bytes:
    """A signature's /Contents with a signature timestamp token, padding after it."""
    original = record()
    signed = sign(original, (Stage.HOMEROOM_TEACHER,), make_pki())
    slot = contents_slot(signed, len(original))
    padded = binascii.unhexlify(signed[slot.start : slot.end])
    splice = CmsSplice.of(padded)
    token = services.token(hashlib.sha256(splice.signature).digest())
    return splice.with_token(token) + b"\0" * 64


def test_the_certificates_found_are_those_asn1crypto_finds(stamped_cms: bytes) -> None:
    found = memo.certificate_ders(stamped_cms)
    expected = [c.dump() for c in dss._certificates([stamped_cms])]
    assert found == expected
    assert len(found) >= 3  # the signer's chain and the TSA's certificate


def test_the_chains_kept_are_those_worked_out_afresh(
    stamped_cms: bytes, services: LtvServices
) -> None:
    roots = [services.ca]
    kept = dss._issuance_chains([stamped_cms, stamped_cms], roots)
    fresh = dss._chains(dss._certificates([stamped_cms, stamped_cms]), roots)
    assert [c.dump() for c in kept.certs] == [c.dump() for c in fresh.certs]
    assert [(a.dump(), b.dump()) for a, b in kept.checked] == [
        (a.dump(), b.dump()) for a, b in fresh.checked
    ]
    assert dss._issuance_chains([stamped_cms, stamped_cms], roots) is kept


def test_a_tokens_tsa_is_found_and_kept(services: LtvServices) -> None:
    token = services.token(secrets.token_bytes(32))
    found = dss._token_tsa(token)
    assert found is not None
    assert (found[0].dump(), found[1].dump()) == (services.tsa_cert.dump(), services.ca.dump())
    assert dss._token_tsa(services.token(secrets.token_bytes(32))) is found


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"nonce": None},
        {"cert_req": False},
        {"req_policy": POLICY},
        {"req_policy": POLICY, "nonce": 2**63 + 5, "cert_req": False},
        {
            "message_imprint": {
                "hash_algorithm": {"algorithm": "sha512"},
                "hashed_message": b"x" * 64,
            }
        },
    ],
)
def test_the_dev_tsa_encodes_as_asn1crypto_does(services: LtvServices, fields: dict) -> None:
    # Given requests of the forms a client sends, at times with and without milliseconds
    values: dict[str, object] = {
        "version": "v1",
        "message_imprint": {
            "hash_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
            "hashed_message": secrets.token_bytes(32),
        },
        "nonce": secrets.randbits(63),
        "cert_req": True,
    }
    values.update({k: v for k, v in fields.items() if v is not None})
    if fields.get("nonce", 0) is None:
        del values["nonce"]
    request = tsp.TimeStampReq(values).dump()
    start = datetime(2026, 12, 2, 4, 30, 0, tzinfo=UTC)
    for step in (0, 100_000, 120_000, 123_456, 999_999, 86_400 * 10**6 + 7_000):
        now = start + timedelta(microseconds=step)
        serial = secrets.randbits(64) >> secrets.randbelow(64)
        # When the DER-level path and asn1crypto's answer it; then the bytes are the same
        assert services.authority.respond(request, now, serial) == (
            services.authority.respond_by_asn1crypto(request, now, serial)
        )


def test_the_dev_tsa_leaves_other_requests_to_asn1crypto(services: LtvServices) -> None:
    # An extension, an unknown algorithm or a wrong length: refused as before
    digest = secrets.token_bytes(32)
    extension = {"extn_id": "1.2.3.4", "critical": False, "extn_value": core.OctetString(b"x")}
    for request in (
        _asn1crypto_request(digest, 1, extensions=[extension]),
        _asn1crypto_request(digest[:20], 1),
    ):
        answer = TimeStampReply.load(services.authority.respond(request))
        assert answer["status"]["status"].native == "rejection"
