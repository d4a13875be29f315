"""A per-signer CMS SignedData template for PAdES B-B: encoded once, two holes per use.

A PAdES B-B signature by a given key differs from the next one by that key in two
values only: the document's message digest (inside the signed attributes) and the
signature value. Everything else (certificates, SignerInfo, algorithm identifiers,
the signing-certificate-v2 attribute; no signing-time attribute, PAdES puts the time
in the signature dictionary's /M) is the same DER bytes every time, and every length
is fixed (SHA-256 is 32 bytes, an RSA signature as long as the modulus). So the
template is encoded once with asn1crypto, with random markers where the two values
go, and each signature is a splice: the bytes are exactly what asn1crypto would
encode for the same values, a canonical DER encoding.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from asn1crypto import algos, cms, core, tsp, x509

DIGEST_BYTES = 32  # SHA-256

# `sign(data)` returns sha256WithRSAEncryption (PKCS#1 v1.5) over `data`, e.g. a
# PKCS#11 CKM_SHA256_RSA_PKCS call; the template fixes that algorithm.
RawSign = Callable[[bytes], bytes]


class TemplateError(ValueError):
    """Raised when a key or a signature does not fit the template."""


@dataclass(frozen=True)
class SignedDataTemplate:
    """The DER of one signer's SignedData, cut around the digest and the signature."""

    signer_cert: x509.Certificate = field(repr=False)
    _attrs_head: bytes = field(repr=False)
    _attrs_tail: bytes = field(repr=False)
    _head: bytes = field(repr=False)
    _middle: bytes = field(repr=False)
    _tail: bytes = field(repr=False)
    signature_bytes: int

    @classmethod
    def for_signer(
        cls, signer_cert: x509.Certificate, chain: list[x509.Certificate]
    ) -> SignedDataTemplate:
        public_key = signer_cert.public_key
        if public_key.algorithm != "rsa":
            raise TemplateError(f"Only RSA keys are supported, not {public_key.algorithm}.")
        signature_bytes = (public_key.bit_size + 7) // 8
        digest_mark = os.urandom(DIGEST_BYTES)
        signature_mark = os.urandom(signature_bytes)

        attrs = _signed_attributes(signer_cert, digest_mark)
        attrs_der = attrs.dump()
        attrs_head, attrs_tail = _split(attrs_der, digest_mark)

        signed_data = _signed_data(signer_cert, chain, attrs, signature_mark)
        der = cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump()
        head, rest = _split(der, digest_mark)
        middle, tail = _split(rest, signature_mark)
        return cls(signer_cert, attrs_head, attrs_tail, head, middle, tail, signature_bytes)

    @property
    def size(self) -> int:
        """Length in bytes of every CMS this template produces."""
        return (
            len(self._head)
            + DIGEST_BYTES
            + len(self._middle)
            + self.signature_bytes
            + len(self._tail)
        )

    def signed_attributes(self, message_digest: bytes) -> bytes:
        """The DER (a SET OF, as signed) of the signed attributes for this digest."""
        _check_length("message digest", message_digest, DIGEST_BYTES)
        return self._attrs_head + message_digest + self._attrs_tail

    def assemble(self, message_digest: bytes, signature: bytes) -> bytes:
        """The CMS ContentInfo DER with this digest and this signature value."""
        _check_length("message digest", message_digest, DIGEST_BYTES)
        _check_length("signature", signature, self.signature_bytes)
        return self._head + message_digest + self._middle + signature + self._tail

    def sign(self, message_digest: bytes, raw_sign: RawSign) -> bytes:
        """Sign the attributes for `message_digest` with `raw_sign`; the CMS DER."""
        return self.assemble(message_digest, raw_sign(self.signed_attributes(message_digest)))


def _signed_attributes(cert: x509.Certificate, digest: bytes) -> cms.CMSAttributes:
    # ESS signing-certificate-v2 binds the signer's certificate (PAdES B-B requires it).
    cert_v2 = tsp.SigningCertificateV2(
        {
            "certs": [
                tsp.ESSCertIDv2(
                    {
                        "hash_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
                        "cert_hash": hashlib.sha256(cert.dump()).digest(),
                        "issuer_serial": {
                            "issuer": [x509.GeneralName({"directory_name": cert.issuer})],
                            "serial_number": cert.serial_number,
                        },
                    }
                )
            ]
        }
    )
    attrs = [
        cms.CMSAttribute({"type": "content_type", "values": ["data"]}),
        cms.CMSAttribute({"type": "message_digest", "values": [core.OctetString(digest)]}),
        cms.CMSAttribute({"type": "signing_certificate_v2", "values": [cert_v2]}),
    ]
    # DER orders a SET OF by its elements' encodings; every length here is fixed, so
    # the order found with the marker digest holds for every digest.
    attrs.sort(key=lambda attr: attr.dump())
    return cms.CMSAttributes(attrs)


def _signed_data(
    cert: x509.Certificate,
    chain: list[x509.Certificate],
    attrs: cms.CMSAttributes,
    signature: bytes,
) -> cms.SignedData:
    digest_algorithm = algos.DigestAlgorithm({"algorithm": "sha256"})
    signer_info = cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                {
                    "issuer_and_serial_number": cms.IssuerAndSerialNumber(
                        {"issuer": cert.issuer, "serial_number": cert.serial_number}
                    )
                }
            ),
            "digest_algorithm": digest_algorithm,
            "signed_attrs": attrs,
            "signature_algorithm": algos.SignedDigestAlgorithm(
                {"algorithm": "sha256_rsa", "parameters": core.Null()}
            ),
            "signature": signature,
        }
    )
    seen: set[bytes] = set()
    certs = []
    for c in [cert, *chain]:
        if c.dump() not in seen:
            seen.add(c.dump())
            certs.append(cms.CertificateChoices({"certificate": c}))
    return cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [digest_algorithm],
            "encap_content_info": {"content_type": "data"},
            "certificates": certs,
            "signer_infos": [signer_info],
        }
    )


def _split(der: bytes, mark: bytes) -> tuple[bytes, bytes]:
    if der.count(mark) != 1:
        raise TemplateError("The template marker is not unique; build the template again.")
    at = der.index(mark)
    return der[:at], der[at + len(mark) :]


def _check_length(what: str, value: bytes, expected: int) -> None:
    if len(value) != expected:
        raise TemplateError(f"The {what} has {len(value)} bytes; the template needs {expected}.")
