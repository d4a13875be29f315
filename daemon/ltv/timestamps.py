"""RFC 3161 timestamps: the TSA client, and the signature timestamp added to a signed PDF.

A B-T signature carries, as the unsigned attribute id-aa-signatureTimeStampToken, a
timestamp over its own signature value, so the token can only be asked for once the
HSM has signed. The HSM worker therefore signs with room to spare in /Contents
(`signing.timestamp_bytes_reserved`), and this module, in the daemon's event loop
where aiohttp lives, asks the TSA and writes the CMS with its token into the same
hex slot: the byte range, and so the signature, do not change. The HSM session is
never held while the network is waited for. The token goes in at the DER level
(`CmsSplice`: the attribute appended to the signer, five enclosing lengths rewritten),
the same bytes asn1crypto writes by decoding and re-encoding the CMS (`with_token`,
still used for a CMS of another shape), in a twentieth of its time. Likewise the
request is written from a template and the TSA's answer read by a DER walk
(daemon/ltv/der.py: the status, and the TSTInfo's imprint and nonce), an answer of
another form by asn1crypto.
"""

from __future__ import annotations

import binascii
import hashlib
import logging
import re
import secrets
import time
from dataclasses import dataclass

import aiohttp
from asn1crypto import cms, core, tsp

from daemon.errors import TsaUnavailable
from daemon.ltv import der as walk
from daemon.metrics import TSA_DURATION, TSA_ERRORS
from daemon.settings import SigningSettings

log = logging.getLogger(__name__)

_BYTE_RANGE = re.compile(rb"/ByteRange\s*\[\s*0\s+(\d+)\s+(\d+)\s+(\d+)\s*\]")
_GRANTED = {"granted", "granted_with_mods"}


class TsaClient:
    """Asks the configured TSA for timestamp tokens; failures are TsaUnavailable."""

    def __init__(self, session: aiohttp.ClientSession, settings: SigningSettings) -> None:
        if not settings.tsa_url:
            raise ValueError("TsaClient needs signing.tsa_url")
        self._session = session
        self._url = settings.tsa_url
        self._timeout = aiohttp.ClientTimeout(total=settings.tsa_timeout_s)
        password = settings.resolved_tsa_password()
        self._auth = (
            aiohttp.BasicAuth(
                settings.tsa_username, password.get_secret_value() if password else ""
            )
            if settings.tsa_username
            else None
        )

    async def stamp(self, digest: bytes, kind: str = "signature") -> cms.ContentInfo:
        """A timestamp token over `digest` (SHA-256), checked to be for it."""
        nonce = secrets.randbits(63)
        started = time.perf_counter()
        try:
            body = await self._post(timestamp_request(digest, nonce))
        finally:
            TSA_DURATION.labels(kind).observe(time.perf_counter() - started)
        # Loaded, not parsed: its DER is written as it came, and read only where needed.
        return cms.ContentInfo.load(_token(body, digest, nonce))

    async def _post(self, query: bytes) -> bytes:
        try:
            async with self._session.post(
                self._url,
                data=query,
                headers={"Content-Type": "application/timestamp-query"},
                auth=self._auth,
                timeout=self._timeout,
            ) as response:
                if response.status != 200:
                    TSA_ERRORS.labels("refused").inc()
                    raise TsaUnavailable(f"The TSA answered HTTP {response.status}.")
                return await response.read()
        except TimeoutError as exc:
            TSA_ERRORS.labels("timeout").inc()
            raise TsaUnavailable("The TSA did not answer in time.") from exc
        except aiohttp.ClientError as exc:
            TSA_ERRORS.labels("unreachable").inc()
            raise TsaUnavailable(f"The TSA cannot be reached: {type(exc).__name__}.") from exc


# TimeStampReq { v1, MessageImprint { sha256 (NULL parameters), digest }, nonce, certReq }
# as asn1crypto writes it (tests/unit/test_tsa_der.py compares the two).
_SHA256_ALGORITHM = bytes.fromhex("300d06096086480165030402010500")
_SHA256_OID = _SHA256_ALGORITHM[2:13]
_VERSION_1 = bytes.fromhex("020101")
_CERT_REQ = bytes.fromhex("0101ff")
_TST_INFO_OID = bytes.fromhex("060b2a864886f70d0109100104")  # 1.2.840.113549.1.9.16.1.4
_STATUS_GRANTED = {0, 1}  # granted, granted_with_mods
_STATUS_NAMES = dict(
    enumerate(
        (
            "granted",
            "granted_with_mods",
            "rejection",
            "waiting",
            "revocation_warning",
            "revocation_notification",
        )
    )
)


def timestamp_request(digest: bytes, nonce: int) -> bytes:
    """The DER TimeStampReq for a SHA-256 `digest`, with `nonce` and certReq."""
    imprint = walk.tlv(walk.SEQUENCE, _SHA256_ALGORITHM + walk.tlv(walk.OCTET_STRING, digest))
    return walk.tlv(walk.SEQUENCE, _VERSION_1 + imprint + walk.integer(nonce) + _CERT_REQ)


def _token(body: bytes, digest: bytes, nonce: int) -> bytes:
    """The token's DER in a TSA's answer, if it is granted and for this digest and nonce.

    Read at the DER level (status, the TSTInfo's imprint and nonce), asn1crypto's
    parse being most of a token's cost in the client; an answer of a form the walk
    does not read is parsed by asn1crypto, as the RFC allows it.
    """
    try:
        status, token, imprint, echoed = _granted(body)
    except (ValueError, IndexError):
        return _token_by_asn1crypto(body, digest, nonce).dump()
    if status not in _STATUS_GRANTED or token is None:
        TSA_ERRORS.labels("refused").inc()
        raise TsaUnavailable(f"The TSA refused the request ({_STATUS_NAMES.get(status, status)}).")
    if imprint != (_SHA256_OID, digest) or echoed != nonce:
        TSA_ERRORS.labels("invalid").inc()
        raise TsaUnavailable("The TSA's token is not for the digest and nonce asked.")
    return token


def _granted(body: bytes) -> tuple[int, bytes | None, tuple[bytes, bytes], int | None]:
    """A TimeStampResp's status, its token's DER, the token's imprint and nonce.

    The imprint is (the algorithm's OID element, the hashed message). ValueError for
    any form this walk does not read (the answer is then parsed by asn1crypto).
    """
    reply = walk.element(body)
    if reply.tag != walk.SEQUENCE or reply.end != len(body):
        raise ValueError("The answer is not one SEQUENCE.")
    parts = walk.children(body, reply)
    status = walk.unsigned(body, walk.children(body, parts[0])[0])
    if len(parts) == 1:
        return status, None, (b"", b""), None
    token = parts[1]
    content_type, explicit = walk.tagged(body, token, walk.OID, walk.EXPLICIT_0)
    if walk.whole(body, content_type) != _SIGNED_DATA_OID or len(parts) != 2:
        raise ValueError("The token is not SignedData.")
    (signed_data,) = walk.tagged(body, explicit, walk.SEQUENCE)
    encap = walk.children(body, signed_data)[2]
    econtent_type, wrapper = walk.tagged(body, encap, walk.OID, walk.EXPLICIT_0)
    (octets,) = walk.tagged(body, wrapper, walk.OCTET_STRING)
    if walk.whole(body, econtent_type) != _TST_INFO_OID:
        raise ValueError("The token's content is not a TSTInfo.")
    info = walk.element(body, octets.content, octets.end)
    fields = walk.children(body, info)
    algorithm, hashed = walk.tagged(body, fields[2], walk.SEQUENCE, walk.OCTET_STRING)
    oid = walk.whole(body, walk.children(body, algorithm)[0])
    # After genTime: accuracy (SEQUENCE), ordering (BOOLEAN), then the nonce, each optional.
    rest = [f for f in fields[5:] if f.tag not in (walk.SEQUENCE, walk.BOOLEAN)]
    echoed = walk.unsigned(body, rest[0]) if rest and rest[0].tag == walk.INTEGER else None
    return status, walk.whole(body, token), (oid, walk.value(body, hashed)), echoed


def _token_by_asn1crypto(body: bytes, digest: bytes, nonce: int) -> cms.ContentInfo:
    """`_token` by asn1crypto's parse, for an answer the DER walk does not read."""
    try:
        response = _Reply.load(body)
        status = response["status"]["status"].native
        token = response["time_stamp_token"]
        if status not in _GRANTED or not isinstance(token, cms.ContentInfo):
            TSA_ERRORS.labels("refused").inc()
            raise TsaUnavailable(f"The TSA refused the request ({status}).")
        info = token["content"]["encap_content_info"]["content"].parsed
        imprint = info["message_imprint"]
        matches = (
            imprint["hash_algorithm"]["algorithm"].native == "sha256"
            and imprint["hashed_message"].native == digest
            and info["nonce"].native == nonce
        )
    except (ValueError, KeyError, TypeError) as exc:
        TSA_ERRORS.labels("invalid").inc()
        raise TsaUnavailable(f"The TSA's answer cannot be read: {exc}") from exc
    if not matches:
        TSA_ERRORS.labels("invalid").inc()
        raise TsaUnavailable("The TSA's token is not for the digest and nonce asked.")
    return token


class _Reply(core.Sequence):
    """TimeStampResp as RFC 3161 has it, the token optional: a refusal carries none,
    and asn1crypto's spec would call it unreadable."""

    _fields = [  # noqa: RUF012 - asn1crypto's spec form
        ("status", tsp.PKIStatusInfo),
        ("time_stamp_token", cms.ContentInfo, {"optional": True}),
    ]


# The signature timestamp in a signed PDF


@dataclass(frozen=True)
class ContentsSlot:
    """Where the newest signature's CMS sits: hex digits from `start` to `end`."""

    start: int
    end: int


def contents_slot(pdf: bytes, since: int = 0) -> ContentsSlot:
    """The /Contents hex of the signature whose byte range is the last one after `since`."""
    found = list(_BYTE_RANGE.finditer(pdf, since))
    if not found:
        raise ValueError("No signature byte range after the given offset.")
    first_end, second_start = int(found[-1][1]), int(found[-1][2])
    if pdf[first_end : first_end + 1] != b"<" or pdf[second_start - 1 : second_start] != b">":
        raise ValueError("The byte range does not frame a hex string.")
    return ContentsSlot(first_end + 1, second_start - 1)


def signed_cms(pdf: bytes, slot: ContentsSlot) -> cms.ContentInfo:
    digits = pdf[slot.start : slot.end]
    return cms.ContentInfo.load(binascii.unhexlify(digits), strict=False)


def signature_value(signed: cms.ContentInfo) -> bytes:
    return bytes(signed["content"]["signer_infos"][0]["signature"].native)


def with_token(signed: cms.ContentInfo, token: cms.ContentInfo) -> bytes:
    """The CMS DER with `token` as its signer's signature timestamp (unsigned attribute)."""
    content = signed["content"]
    signer = content["signer_infos"][0]
    attribute = cms.CMSAttribute({"type": "signature_time_stamp_token", "values": [token]})
    # Rebuild the two containers from their parts: every other element keeps the bytes
    # it was parsed from (asn1crypto re-encodes only what changed), so the signed
    # attributes, certificates and signature value stay exactly as the HSM signed them.
    parts = _present(signer, "unsigned_attrs")
    new_signer = cms.SignerInfo({**parts, "unsigned_attrs": cms.CMSAttributes([attribute])})
    fields = _present(content, "signer_infos")
    new_content = cms.SignedData({**fields, "signer_infos": cms.SignerInfos([new_signer])})
    return cms.ContentInfo({"content_type": "signed_data", "content": new_content}).dump()


def _present(sequence: core.Sequence, leave_out: str) -> dict[str, core.Asn1Value]:
    """The fields a parsed SEQUENCE has (absent optional ones are Void), but one."""
    return {
        name: sequence[name]
        for name in sequence
        if name != leave_out and not isinstance(sequence[name], core.Void)
    }


def replace_contents(pdf: bytes, slot: ContentsSlot, der: bytes) -> bytes:
    """`pdf` with `der` hex-encoded in `slot`, zero-padded as the signer padded it."""
    digits = binascii.hexlify(der).upper()
    room = slot.end - slot.start
    if len(digits) > room:
        raise TsaUnavailable(
            f"The signature with its timestamp has {len(der)} bytes; {room // 2} are reserved "
            "(raise signing.timestamp_bytes_reserved)."
        )
    return b"".join((pdf[: slot.start], digits.ljust(room, b"0"), pdf[slot.end :]))


async def add_signature_timestamp(pdf: bytes, since: int, tsa: TsaClient) -> bytes:
    """The signed PDF with a signature timestamp in its newest signature (B-T)."""
    slot = contents_slot(pdf, since)
    der = binascii.unhexlify(pdf[slot.start : slot.end])
    try:
        splice = CmsSplice.of(der)
    except ValueError:  # a CMS the DER walk does not expect: asn1crypto rewrites it
        signed = cms.ContentInfo.load(der, strict=False)
        token = await tsa.stamp(hashlib.sha256(signature_value(signed)).digest())
        return replace_contents(pdf, slot, with_token(signed, token))
    token = await tsa.stamp(hashlib.sha256(splice.signature).digest())
    return replace_contents(pdf, slot, splice.with_token(token.dump()))


# The same splice at the DER level: what asn1crypto's with_token writes, without
# decoding and re-encoding the whole CMS (a few milliseconds a signature otherwise).

# Attribute { id-aa-signatureTimeStampToken (1.2.840.113549.1.9.16.2.14), SET { token } }
_TIMESTAMP_ATTRIBUTE_OID = bytes.fromhex("060b2a864886f70d010910020e")
_SIGNED_DATA_OID = bytes.fromhex("06092a864886f70d010702")  # 1.2.840.113549.1.7.2


@dataclass(frozen=True)
class CmsSplice:
    """A CMS with one signer and no unsigned attributes, walked down to that signer."""

    der: bytes
    path: tuple[walk.Element, ...]  # ContentInfo, [0], SignedData, SignerInfos, SignerInfo
    signature: bytes

    @classmethod
    def of(cls, padded: bytes) -> CmsSplice:
        """The walk of the CMS at the start of `padded`; ValueError for any other shape."""
        info = walk.element(padded, 0, len(padded))
        der = padded[: info.end]
        if not der.startswith(_SIGNED_DATA_OID, info.content):
            raise ValueError("The CMS is not SignedData.")
        explicit = _last(der, info, walk.EXPLICIT_0)
        signed_data = _only(der, explicit, walk.SEQUENCE)
        signer_infos = _last(der, signed_data, walk.SET)
        signer = _only(der, signer_infos, walk.SEQUENCE)
        fields = walk.children(der, signer)
        if info.tag != walk.SEQUENCE or not fields or fields[-1].tag != walk.OCTET_STRING:
            raise ValueError("The signer already has unsigned attributes, or no signature.")
        value = fields[-1]
        path = (info, explicit, signed_data, signer_infos, signer)
        return cls(der, path, der[value.content : value.end])

    def with_token(self, token: bytes) -> bytes:
        """The CMS DER with `token` (a ContentInfo's DER) as the signature timestamp."""
        values = walk.tlv(walk.SET, token)
        attribute = walk.tlv(walk.SEQUENCE, _TIMESTAMP_ATTRIBUTE_OID + values)
        added = walk.tlv(walk.IMPLICIT_1, attribute)
        # Every element on the path ends where the signer does: each header grows by
        # len(added), and the bytes between the headers stay as they were.
        pieces, at = [], 0
        for element in self.path:
            pieces.append(self.der[at : element.start])
            pieces.append(walk.header(element.tag, element.end - element.content + len(added)))
            at = element.content
        pieces += [self.der[at:], added]
        return b"".join(pieces)


def _last(der: bytes, parent: walk.Element, tag: int) -> walk.Element:
    children = walk.children(der, parent)
    if not children or children[-1].tag != tag or children[-1].end != parent.end:
        raise ValueError(f"The CMS does not end with the element tagged {tag:#x} expected.")
    return children[-1]


def _only(der: bytes, parent: walk.Element, tag: int) -> walk.Element:
    children = walk.children(der, parent)
    if len(children) != 1 or children[0].tag != tag:
        raise ValueError(f"The CMS holds other than one element tagged {tag:#x} here.")
    return children[0]
