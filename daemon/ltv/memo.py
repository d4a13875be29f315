"""Per-certificate work kept by DER bytes, for the seal's long-term validation update.

Every sealed record of a school carries the same certificates: its three signers',
the TSA's and the issuing CA's. Parsing them (asn1crypto, cryptography), pairing each
with its issuer and comparing names cost a few milliseconds a record when done
afresh; here it is done once per process for each distinct set and kept, by the
certificates' DER, so a record only pays the DER walk that finds them in its CMS.
A certificate's bytes are what it is, so nothing kept can go stale: only status
answers expire, and those are not kept here (daemon/ltv/status.py keeps them until
their nextUpdate).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from asn1crypto import x509 as asn1_x509
from cryptography import x509

from daemon.ltv import der as walk

V = TypeVar("V")

# Enough for the certificates an instance signs with at the peak; past it, all is
# forgotten (and worked out again, as every time before this module), so a
# long-running process does not grow: under 10 MB (about 7 KB a parsed certificate).
MAX_ENTRIES = 1024

_SIGNED_DATA_OID = bytes.fromhex("06092a864886f70d010702")  # 1.2.840.113549.1.7.2
_TIMESTAMP_ATTRIBUTE_OID = bytes.fromhex("060b2a864886f70d010910020e")


class Memo(Generic[V]):
    """Values worked out once per key, at most `limit` of them."""

    def __init__(self, limit: int = MAX_ENTRIES) -> None:
        self._values: dict[Hashable, V] = {}
        self._limit = limit

    def get(self, key: Hashable, compute: Callable[[], V]) -> V:
        try:
            return self._values[key]
        except KeyError:
            pass
        value = compute()
        if len(self._values) >= self._limit:
            self._values.clear()
        self._values[key] = value
        return value

    def __len__(self) -> int:
        return len(self._values)


# (SHA-256 of the certificates' DER, the roots' DER) -> dss._Chains
CHAINS: Memo[Any] = Memo()
TOKEN_TSAS: Memo[Any] = Memo()  # (certificates, signer id) -> (TSA cert, issuer) | None
_PARSED: Memo[asn1_x509.Certificate] = Memo()
_CRYPTO: Memo[x509.Certificate] = Memo()


def certificate(der: bytes) -> asn1_x509.Certificate:
    """The certificate of `der`, parsed once."""
    return _PARSED.get(der, lambda: asn1_x509.Certificate.load(der))


def crypto(der: bytes) -> x509.Certificate:
    """The certificate of `der` as pyca/cryptography's, loaded once."""
    return _CRYPTO.get(der, lambda: x509.load_der_x509_certificate(der))


def certificate_ders(cms: bytes) -> list[bytes]:
    """The certificates (DER) of a signature's CMS and of its signature timestamp tokens.

    `cms` may carry padding after the CMS. ValueError (or IndexError) for a form the
    DER walk does not read.
    """
    signed_data = _signed_data(cms)
    found = _certificates(cms, signed_data)
    for token in _timestamp_tokens(cms, signed_data):
        found += _certificates(cms, _signed_data(cms, token.start, token.end))
    return found


def signer_key(token: bytes) -> tuple[bytes, bytes]:
    """A token's certificates field and its (first) signer's identifier, DER."""
    signed_data = _signed_data(token)
    fields = walk.children(token, signed_data)
    held = [f for f in fields[3:-1] if f.tag == walk.EXPLICIT_0]  # [0] CertificateSet
    signer = walk.children(token, walk.children(token, fields[-1])[0])
    return (walk.whole(token, held[0]) if held else b""), walk.whole(token, signer[1])


def _signed_data(der: bytes, at: int = 0, limit: int | None = None) -> walk.Element:
    info = walk.element(der, at, limit)
    content_type, explicit = walk.tagged(der, info, walk.OID, walk.EXPLICIT_0)
    if walk.whole(der, content_type) != _SIGNED_DATA_OID:
        raise ValueError("Not a SignedData.")
    (signed_data,) = walk.tagged(der, explicit, walk.SEQUENCE)
    return signed_data


def _certificates(der: bytes, signed_data: walk.Element) -> list[bytes]:
    """The certificates of a SignedData ([0] IMPLICIT after encapContentInfo)."""
    fields = walk.children(der, signed_data)
    held = [f for f in fields[3:-1] if f.tag == walk.EXPLICIT_0]  # [0] CertificateSet
    if not held:
        return []
    return [walk.whole(der, c) for c in walk.children(der, held[0]) if c.tag == walk.SEQUENCE]


def _timestamp_tokens(der: bytes, signed_data: walk.Element) -> list[walk.Element]:
    """The signature timestamp tokens in each signer's unsigned attributes."""
    tokens = []
    signer_infos = walk.children(der, signed_data)[-1]
    if signer_infos.tag != walk.SET:
        raise ValueError("The SignedData does not end with its signers.")
    for signer in walk.children(der, signer_infos):
        last = walk.children(der, signer)[-1]
        if last.tag != walk.IMPLICIT_1:  # no unsigned attributes
            continue
        for attribute in walk.children(der, last):
            kind, values = walk.tagged(der, attribute, walk.OID, walk.SET)
            if walk.whole(der, kind) == _TIMESTAMP_ATTRIBUTE_OID:
                tokens += walk.children(der, values)
    return tokens
