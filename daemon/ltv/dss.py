"""Long-term validation at the seal: the DSS of all three signatures, then a document timestamp.

At B-LT and B-LTA the seal stage ends the record with one more incremental update: a
document security store holding every certificate of the three signatures and their
timestamps, and the OCSP responses (or CRLs) that said each was good, so the record
validates with no network; at B-LTA a document timestamp then covers it all, so that
the data stays provably unchanged after the TSA's certificate expires, until the next
renewal (`horizon` says when that is due). The status answers are the ones
daemon/ltv/status.py cached when each key was about to sign, so building the DSS
usually costs no request at all.

At issuance the update is written by hand (daemon/pdf/dss_update.py), in the event
loop: reading the three signatures' CMS and the few objects the update changes, and
writing it, cost 2-3 ms of CPU, where pyHanko's full parse and write cost 40-50 ms at
B-LT and about 100 ms at B-LTA (see the README's measurements). The certificates are
found in the CMS by a DER walk, and what is worked out from them (parsed, paired
with their issuers, the document timestamp's TSA) is kept by their DER
(daemon/ltv/memo.py): a school's records all carry the same few. A file that writer
does not take (a renewal: a DSS and a document timestamp already there;
daemon/ltv/renewal.py) is extended by pyHanko in a thread, the TSA request going back
to the event loop, where the TSA client lives: fresh validation data for everything
the file holds, the previous document timestamps included, then a new document
timestamp. A document timestamp by a TSA certificate the file did not hold yet (a
renewal after the TSA changed its certificate) is followed by one more DSS update, by
pyHanko, with that certificate's status, so the newest timestamp validates offline too.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from io import BytesIO
from typing import TYPE_CHECKING

from asn1crypto import cms, ocsp
from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from pyhanko.sign.timestamps.api import TimeStamper

from daemon.errors import NotAPdf, TsaUnavailable
from daemon.ltv import memo as _memo
from daemon.ltv.timestamps import TsaClient
from daemon.pdf.dss_update import ContentsTooLarge, Unsupported, ValidationData, read_ltv_target
from daemon.pdf.pades import parse_errors, read_pdf

if TYPE_CHECKING:
    from daemon.ltv.status import CertificateStatus

# Room for the document timestamp token in its /Contents (hex digits: twice this).
DOC_TIMESTAMP_BYTES = 8192
# Digests and key sizes that no longer prove anything: a timestamp using them is due
# for renewal at once (ETSI TS 119 312 retired SHA-1; RSA below 2048 bits likewise).
_WEAK_DIGESTS = {"md5", "sha1"}
_MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class Horizon:
    """Until when a record's newest timestamp proves it: its TSA certificate's expiry,
    or its own time if its algorithm is weak; None if the record has no timestamp."""

    expires_at: datetime | None
    reason: str  # certificate | algorithm | none


def horizon(pdf: bytes) -> Horizon:
    """The horizon of `pdf`'s newest timestamp (a document or signature timestamp)."""
    reader = read_pdf(pdf)
    tokens: list[cms.SignedData] = []
    try:
        for sig in reader.embedded_signatures:
            datas = list(_signed_datas(sig.signed_data))
            is_doc_timestamp = sig.sig_object_type == "/DocTimeStamp"
            tokens.extend(datas if is_doc_timestamp else datas[1:])
    except parse_errors() as exc:
        raise NotAPdf(f"The record's signatures cannot be read: {exc}") from exc
    if not tokens:
        return Horizon(None, "none")
    newest = max(tokens, key=_gen_time)
    signer = newest["signer_infos"][0]
    cert = _token_signer(newest)
    key = cert.public_key
    weak = signer["digest_algorithm"]["algorithm"].native in _WEAK_DIGESTS or (
        key.algorithm == "rsa" and key.bit_size < _MIN_RSA_BITS
    )
    if weak:
        return Horizon(_gen_time(newest), "algorithm")
    return Horizon(cert["tbs_certificate"]["validity"]["not_after"].native, "certificate")


def _gen_time(token: cms.SignedData) -> datetime:
    info = token["encap_content_info"]["content"].parsed
    return info["gen_time"].native


def _token_signer(token: cms.SignedData) -> asn1_x509.Certificate:
    sid = token["signer_infos"][0]["sid"].chosen
    for choice in token["certificates"] or []:
        cert = choice.chosen
        if choice.name != "certificate":
            continue
        if isinstance(sid, cms.IssuerAndSerialNumber):
            # The serial first, and the names by their DER before asn1crypto's
            # comparison (after LDAP string preparation, slow): mostly they are copies.
            if cert.serial_number == sid["serial_number"].native and _same_name(
                cert.issuer, sid["issuer"]
            ):
                return cert
        elif cert.key_identifier == sid.native:
            return cert
    raise NotAPdf("A timestamp token does not carry its TSA's certificate.")


@dataclass(frozen=True)
class _Chains:
    """The certificates of a record's signatures and timestamps, and whose status to embed."""

    certs: list[asn1_x509.Certificate] = field(default_factory=list)
    checked: list[tuple[asn1_x509.Certificate, asn1_x509.Certificate]] = field(default_factory=list)
    known: frozenset[bytes] = frozenset()  # the certificates' DER
    # The field of the next document timestamp: DocTimeStamp, then DocTimeStamp2, ...
    timestamp_field: list[str] = field(default_factory=lambda: ["DocTimeStamp"])


async def extend(
    pdf: bytes,
    status: CertificateStatus,
    tsa: TsaClient,
    trust_roots: list[asn1_x509.Certificate],
    *,
    archive: bool,
) -> bytes:
    """`pdf` with a DSS for every signature and, if `archive`, a document timestamp.

    The DSS holds every certificate up to `trust_roots` and the status of each one
    below them (signers, the TSA, the issuing CA), so nothing must be fetched later.
    """
    try:
        target = read_ltv_target(pdf)
        chains = _issuance_chains(target.signatures, trust_roots)
    except (Unsupported, ValueError, KeyError, TypeError):
        # A renewal (a DSS and a document timestamp already there) or a file the
        # hand-written update does not expect: pyHanko reads and extends any PDF.
        return await _extend_with_pyhanko(pdf, status, tsa, trust_roots, archive=archive)
    ocsps, crls = await _answers(status, chains.checked)
    data = ValidationData([c.dump() for c in chains.certs], ocsps, crls)
    try:
        if not archive:
            return target.dss_update(data)
        prepared = target.prepare_timestamp(data, DOC_TIMESTAMP_BYTES)
    except Unsupported:  # a file too large for the byte range's slot, say
        return await _extend_with_pyhanko(pdf, status, tsa, trust_roots, archive=archive)
    token = await tsa.stamp(prepared.document_digest, "document")
    try:
        stamped = prepared.complete(token.dump())
    except ContentsTooLarge as exc:
        raise TsaUnavailable(f"The TSA's document timestamp does not fit: {exc}") from exc
    newcomer = _token_tsa(token.dump())
    return await _with_newcomer(stamped, newcomer, chains.known, status)


async def _extend_with_pyhanko(
    pdf: bytes,
    status: CertificateStatus,
    tsa: TsaClient,
    trust_roots: list[asn1_x509.Certificate],
    *,
    archive: bool,
) -> bytes:
    """`extend` by pyHanko: its full parse, in a thread; renewals come this way."""
    chains = await asyncio.to_thread(_collect, pdf, trust_roots)
    ocsps, crls = await _answers(status, chains.checked)
    loop = asyncio.get_running_loop()
    stamp = (tsa, chains.timestamp_field[0]) if archive else None
    stamped = await asyncio.to_thread(_write, pdf, chains.certs, ocsps, crls, stamp, loop)
    if not archive:
        return stamped
    newcomer = await asyncio.to_thread(_newest_tsa, stamped)
    return await _with_newcomer(stamped, newcomer, chains.known, status)


async def _answers(
    status: CertificateStatus,
    checked: list[tuple[asn1_x509.Certificate, asn1_x509.Certificate]],
) -> tuple[list[bytes], list[bytes]]:
    """The cached (or fetched) OCSP responses and CRLs of `checked`, each once."""
    ocsps: list[bytes] = []
    crls: list[bytes] = []
    for cert, issuer in checked:
        answer = await status.answer(_crypto(cert), _crypto(issuer))
        if answer is None:
            continue
        (ocsps if answer.source == "ocsp" else crls).append(answer.answer)
    return _unique(ocsps), _unique(crls)


async def _with_newcomer(
    stamped: bytes,
    newcomer: tuple[asn1_x509.Certificate, asn1_x509.Certificate] | None,
    known: frozenset[bytes],
    status: CertificateStatus,
) -> bytes:
    """`stamped`, and the status of its document timestamp's TSA if the file lacked it."""
    if newcomer is None or newcomer[0].dump() in known:
        return stamped
    answer = await status.answer(_crypto(newcomer[0]), _crypto(newcomer[1]))
    if answer is None:
        return stamped
    ocsps, crls = ([answer.answer], []) if answer.source == "ocsp" else ([], [answer.answer])
    loop = asyncio.get_running_loop()
    return await asyncio.to_thread(_write, stamped, list(newcomer), ocsps, crls, None, loop)


def _newest_tsa(pdf: bytes) -> tuple[asn1_x509.Certificate, asn1_x509.Certificate] | None:
    """The certificate of the last document timestamp's TSA and its issuer, if it has one."""
    stamps = read_pdf(pdf).embedded_timestamp_signatures
    return _tsa_of(stamps[-1].signed_data) if stamps else None


def _tsa_of(token: cms.SignedData) -> tuple[asn1_x509.Certificate, asn1_x509.Certificate] | None:
    """A timestamp token's TSA certificate and its issuer, if the token carries both."""
    cert = _token_signer(token)
    certs = [c.chosen for c in token["certificates"] or [] if c.name == "certificate"]
    issuer = cert.issuer.dump()
    issuers = [c for c in certs if c.subject.dump() == issuer] or [
        c for c in certs if c.subject == cert.issuer
    ]
    return (cert, issuers[0]) if issuers else None


def _collect(pdf: bytes, trust_roots: list[asn1_x509.Certificate]) -> _Chains:
    reader = read_pdf(pdf)
    certs: list[asn1_x509.Certificate] = []
    try:
        stamps = sum(s.sig_object_type == "/DocTimeStamp" for s in reader.embedded_signatures)
        for sig in reader.embedded_signatures:
            certs += _certificates_of(sig.signed_data)
    except parse_errors() as exc:
        raise NotAPdf(f"The record's signatures cannot be read: {exc}") from exc
    chains = _chains(certs, trust_roots)
    if stamps:
        chains.timestamp_field[:] = [f"DocTimeStamp{stamps + 1}"]
    return chains


def _issuance_chains(signatures: list[bytes], trust_roots: list[asn1_x509.Certificate]) -> _Chains:
    """`_chains` of the certificates in the signatures' CMS, worked out once per set.

    A school's records carry the same few certificates (three signers, the TSA, the
    CA), so the chains are kept by those certificates' DER, read by a DER walk.
    """
    try:
        ders = [cert for signature in signatures for cert in _memo.certificate_ders(signature)]
    except (ValueError, IndexError):  # a CMS the walk does not read: asn1crypto does
        return _chains(_certificates(signatures), trust_roots)
    # DER elements delimit themselves, so the digest of their concatenation names the set.
    key = (hashlib.sha256(b"".join(ders)).digest(), tuple(root.dump() for root in trust_roots))
    return _memo.CHAINS.get(key, lambda: _chains([_memo.certificate(d) for d in ders], trust_roots))


def _token_tsa(token: bytes) -> tuple[asn1_x509.Certificate, asn1_x509.Certificate] | None:
    """`_tsa_of` a token's DER, kept by the token's certificates and signer id."""

    def afresh() -> tuple[asn1_x509.Certificate, asn1_x509.Certificate] | None:
        return _tsa_of(cms.ContentInfo.load(token)["content"])

    try:
        key = _memo.signer_key(token)
    except (ValueError, IndexError):
        return afresh()
    return _memo.TOKEN_TSAS.get(key, afresh)


def _certificates(signatures: list[bytes]) -> list[asn1_x509.Certificate]:
    """The certificates in each signature's CMS (DER, padding after it ignored)."""
    certs: list[asn1_x509.Certificate] = []
    for der in signatures:
        certs += _certificates_of(cms.ContentInfo.load(der, strict=False)["content"])
    return certs


def _certificates_of(signed_data: cms.SignedData) -> list[asn1_x509.Certificate]:
    """The certificates of a signature and of its signature timestamp tokens."""
    return [
        c.chosen
        for data in _signed_datas(signed_data)
        for c in data["certificates"] or []
        if c.name == "certificate"
    ]


def _chains(
    certs: list[asn1_x509.Certificate], trust_roots: list[asn1_x509.Certificate]
) -> _Chains:
    """Every certificate once, the roots included, and each one's issuer among them."""
    unique = {c.dump(): c for c in [*certs, *trust_roots]}
    chains = _Chains(certs=list(unique.values()), known=frozenset(unique))
    by_subject = {c.subject.dump(): c for c in chains.certs}
    for cert in chains.certs:
        issuer_name = cert.issuer.dump()
        issuer = by_subject.get(issuer_name)
        # Names compared as bytes first: asn1crypto's self_signed compares them after
        # LDAP string preparation, a millisecond a certificate; only roots need that.
        if issuer is not None and (issuer_name != cert.subject.dump() or cert.self_signed == "no"):
            chains.checked.append((cert, issuer))
    return chains


def _signed_datas(signed_data: cms.SignedData) -> Iterator[cms.SignedData]:
    """A signature's SignedData, then those of its signature timestamp tokens."""
    yield signed_data
    for info in signed_data["signer_infos"]:
        for attr in info["unsigned_attrs"] or []:
            if attr["type"].native == "signature_time_stamp_token":
                for token in attr["values"]:
                    yield token["content"]


def _write(
    pdf: bytes,
    certs: list[asn1_x509.Certificate],
    ocsps: list[bytes],
    crls: list[bytes],
    stamp: tuple[TsaClient, str] | None,
    loop: asyncio.AbstractEventLoop,
) -> bytes:
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.sign.signers.pdf_signer import PdfTimeStamper
    from pyhanko.sign.validation.dss import DocumentSecurityStore

    try:
        writer = IncrementalPdfFileWriter(BytesIO(pdf), strict=False)
        DocumentSecurityStore.supply_dss_in_writer(
            writer,
            None,
            certs=certs,
            ocsps=[ocsp.OCSPResponse.load(der) for der in ocsps],
            crls=[asn1_crl.CertificateList.load(der) for der in crls],
        )
        if stamp is None:
            out = BytesIO()
            writer.write(out)
            return out.getvalue()
        tsa, field_name = stamp
        stamper = PdfTimeStamper(_LoopTimeStamper(tsa, loop), field_name=field_name)
        stamped = stamper.timestamp_pdf(writer, "sha256", bytes_reserved=2 * DOC_TIMESTAMP_BYTES)
        return bytes(stamped.getvalue())
    except parse_errors() as exc:
        raise NotAPdf(f"The record cannot be extended for long-term validation: {exc}") from exc


class _LoopTimeStamper(TimeStamper):
    """pyHanko's TimeStamper, asking through our TSA client on the daemon's event loop."""

    def __init__(self, tsa: TsaClient, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(include_nonce=True)
        self._tsa = tsa
        self._loop = loop

    async def async_timestamp(self, message_digest: bytes, md_algorithm: str) -> cms.ContentInfo:
        if md_algorithm != "sha256":
            raise ValueError(f"Only sha256 timestamps are asked for, not {md_algorithm}.")
        future: Future[cms.ContentInfo] = asyncio.run_coroutine_threadsafe(
            self._tsa.stamp(message_digest, "document"), self._loop
        )
        return await asyncio.wrap_future(future)


def _crypto(cert: asn1_x509.Certificate) -> x509.Certificate:
    return _memo.crypto(cert.dump())


def _same_name(a: asn1_x509.Name, b: asn1_x509.Name) -> bool:
    return a.dump() == b.dump() or a == b


def _unique(items: list[bytes]) -> list[bytes]:
    seen: set[str] = set()
    kept = []
    for item in items:
        digest = hashlib.sha256(item).hexdigest()
        if digest not in seen:
            seen.add(digest)
            kept.append(item)
    return kept
