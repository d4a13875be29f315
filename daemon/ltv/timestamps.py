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
still used for a CMS of another shape), in a twentieth of its time.
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
from asn1crypto import algos, cms, core, tsp

from daemon.errors import TsaUnavailable
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
        request = tsp.TimeStampReq(
            {
                "version": "v1",
                "message_imprint": {
                    "hash_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
                    "hashed_message": digest,
                },
                "nonce": nonce,
                "cert_req": True,
            }
        )
        started = time.perf_counter()
        try:
            body = await self._post(request.dump())
        finally:
            TSA_DURATION.labels(kind).observe(time.perf_counter() - started)
        return _token(body, digest, nonce)

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


def _token(body: bytes, digest: bytes, nonce: int) -> cms.ContentInfo:
    """The token of a TSA's answer, if it is granted and for this digest and nonce."""
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
_SEQUENCE, _SET, _OCTET_STRING, _EXPLICIT_0, _IMPLICIT_1 = 0x30, 0x31, 0x04, 0xA0, 0xA1


@dataclass(frozen=True)
class _Element:
    """A DER element: its tag, where its header starts, where its content starts and ends."""

    tag: int
    start: int
    content: int
    end: int


def _element(der: bytes, at: int, limit: int) -> _Element:
    """The element at `at`, which must end by `limit` (single-byte tags, definite lengths)."""
    if at + 2 > limit:
        raise ValueError(f"No DER element at byte {at}.")
    tag, first = der[at], der[at + 1]
    if tag & 0x1F == 0x1F or first == 0x80 or first > 0x84:
        raise ValueError(f"The DER element at byte {at} has a form this splice does not read.")
    if first < 0x80:
        content, length = at + 2, first
    else:
        content = at + 2 + (first & 0x7F)
        length = int.from_bytes(der[at + 2 : content], "big")
    if content + length > limit:
        raise ValueError(f"The DER element at byte {at} overruns its container.")
    return _Element(tag, at, content, content + length)


def _children(der: bytes, parent: _Element) -> list[_Element]:
    children, at = [], parent.content
    while at < parent.end:
        child = _element(der, at, parent.end)
        children.append(child)
        at = child.end
    return children


def _header(tag: int, length: int) -> bytes:
    if length < 0x80:
        return bytes((tag, length))
    size = (length.bit_length() + 7) // 8
    return bytes((tag, 0x80 | size)) + length.to_bytes(size, "big")


@dataclass(frozen=True)
class CmsSplice:
    """A CMS with one signer and no unsigned attributes, walked down to that signer."""

    der: bytes
    path: tuple[_Element, ...]  # ContentInfo, [0], SignedData, SignerInfos, SignerInfo
    signature: bytes

    @classmethod
    def of(cls, padded: bytes) -> CmsSplice:
        """The walk of the CMS at the start of `padded`; ValueError for any other shape."""
        info = _element(padded, 0, len(padded))
        der = padded[: info.end]
        if not der.startswith(_SIGNED_DATA_OID, info.content):
            raise ValueError("The CMS is not SignedData.")
        explicit = _last(der, info, _EXPLICIT_0)
        signed_data = _only(der, explicit, _SEQUENCE)
        signer_infos = _last(der, signed_data, _SET)
        signer = _only(der, signer_infos, _SEQUENCE)
        fields = _children(der, signer)
        if info.tag != _SEQUENCE or not fields or fields[-1].tag != _OCTET_STRING:
            raise ValueError("The signer already has unsigned attributes, or no signature.")
        value = fields[-1]
        path = (info, explicit, signed_data, signer_infos, signer)
        return cls(der, path, der[value.content : value.end])

    def with_token(self, token: bytes) -> bytes:
        """The CMS DER with `token` (a ContentInfo's DER) as the signature timestamp."""
        values = _header(_SET, len(token)) + token
        body = _TIMESTAMP_ATTRIBUTE_OID + values
        attribute = _header(_SEQUENCE, len(body)) + body
        added = _header(_IMPLICIT_1, len(attribute)) + attribute
        # Every element on the path ends where the signer does: each header grows by
        # len(added), and the bytes between the headers stay as they were.
        pieces, at = [], 0
        for element in self.path:
            pieces.append(self.der[at : element.start])
            pieces.append(_header(element.tag, element.end - element.content + len(added)))
            at = element.content
        pieces += [self.der[at:], added]
        return b"".join(pieces)


def _last(der: bytes, parent: _Element, tag: int) -> _Element:
    children = _children(der, parent)
    if not children or children[-1].tag != tag or children[-1].end != parent.end:
        raise ValueError(f"The CMS does not end with the element tagged {tag:#x} expected.")
    return children[-1]


def _only(der: bytes, parent: _Element, tag: int) -> _Element:
    children = _children(der, parent)
    if len(children) != 1 or children[0].tag != tag:
        raise ValueError(f"The CMS holds other than one element tagged {tag:#x} here.")
    return children[0]
