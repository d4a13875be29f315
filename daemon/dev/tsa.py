"""The dev TSA: RFC 3161 answers signed by a key loaded once.

pyHanko's `DummyTimeStamper` loads its private key from DER for every request, and
`cryptography` checks an RSA key as it loads it: about 49 ms a token on this machine,
3 to 4 tokens a B-LTA record. Reusing it would mean overriding its private
`_sign_tst_info`, so the dev services answer with this small responder instead
(asn1crypto builds the structures, cryptography signs): the key is loaded once, a
token costs one RSA-2048 signature.

What a token holds (RFC 3161 §2.4.2, RFC 5816): TSTInfo v1 with the dev policy, a
random 64-bit serial, genTime (milliseconds, accuracy 1 s), the request's nonce
echoed and the TSA's name; a SignedData whose signed attributes are the content
type, the message digest, the signing time and an ESS signing-certificate-v2
(ESSCertIDv2, SHA-256 of the TSA certificate); the TSA certificate and its issuer
when the request asks for them (certReq). Requests for another hash algorithm, an
imprint of the wrong length, another policy or with extensions are refused with the
RFC's failure info.

A request of the usual form is read and answered at the DER level (daemon/ltv/der.py):
what varies from one token to the next (the imprint and nonce copied from the request,
the serial, the times, the digest and the signature) is put between pieces encoded
once, with the same bytes asn1crypto writes (tests/unit/test_tsa_der.py compares
them); the RSA signature is still made for every token. Any other request, refusals
included, goes through asn1crypto.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from asn1crypto import algos, cms, core, tsp
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from daemon.ltv import der as walk

# The dev TSA's policy: an OID under the UUID arc (2.25), made once for this project.
POLICY = "2.25.229181433419640395512925101371349346101"
_DIGEST_SIZES = {"sha256": 32, "sha384": 48, "sha512": 64}
# The digest algorithms' OIDs (DER), and their sizes, for the DER-level path.
_DIGEST_OIDS = {algos.DigestAlgorithmId(name).dump(): size for name, size in _DIGEST_SIZES.items()}
_TST_INFO = bytes.fromhex("060b2a864886f70d0109100104")  # id-ct-TSTInfo
_SIGNED_DATA = bytes.fromhex("06092a864886f70d010702")
_GRANTED = bytes.fromhex("3003020100")  # PKIStatusInfo { granted }


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: an RFC 3161 PKIFailureInfo bit name and a sentence."""

    failure: str
    text: str


class TimestampAuthority:
    """Answers TimeStampReq DER with TimeStampResp DER; the key is loaded by the caller once."""

    def __init__(
        self,
        cert: bytes,
        key: rsa.RSAPrivateKey,
        chain: list[bytes],
        policy: str = POLICY,
    ) -> None:
        self._cert = asn1_x509.Certificate.load(cert)
        self._chain = [asn1_x509.Certificate.load(der) for der in chain]
        self._key = key
        self._policy = policy
        # Parsed from their DER once: asn1crypto then copies these bytes into each token
        # instead of encoding certificates again (most of a token's cost otherwise).
        self._certificates = cms.CertificateSet.load(
            cms.CertificateSet([self._cert, *self._chain]).dump()
        )
        signing_certificate = tsp.SigningCertificateV2(
            {
                "certs": [
                    {
                        # SHA-256 is ESSCertIDv2's default algorithm, so it is left out.
                        "cert_hash": hashlib.sha256(cert).digest(),
                        "issuer_serial": {
                            "issuer": [
                                asn1_x509.GeneralName(
                                    name="directory_name", value=self._cert.issuer
                                )
                            ],
                            "serial_number": self._cert.serial_number,
                        },
                    }
                ]
            }
        )
        self._signing_certificate = tsp.SigningCertificateV2.load(signing_certificate.dump())
        self._pieces = _Pieces.of(self)

    def respond(self, body: bytes, now: datetime | None = None, serial: int | None = None) -> bytes:
        """The DER answer to a DER request: a granted token, or a rejection saying why.

        `serial`: the token's serial number (random by default).
        """
        now = now or datetime.now(UTC)
        serial = secrets.randbits(64) if serial is None else serial
        try:
            fields = _usual_request(body, self._pieces.policy)
        except (ValueError, IndexError):
            fields = None
        if fields is not None:
            return self._pieces.response(*fields, now, serial, self._key)
        return self.respond_by_asn1crypto(body, now, serial)

    def respond_by_asn1crypto(self, body: bytes, now: datetime, serial: int) -> bytes:
        """`respond` by asn1crypto's parse and encoding: any request, refusals included."""
        try:
            request = tsp.TimeStampReq.load(body)
            request.native  # noqa: B018 - parses it all now, so a bad request fails here
        except ValueError:
            return _rejection(Refusal("bad_data_format", "The request cannot be read."))
        refusal = self._refusal(request)
        if refusal is not None:
            return _rejection(refusal)
        token = self._token(request, now, serial)
        granted = tsp.TimeStampResp({"status": {"status": "granted"}, "time_stamp_token": token})
        return granted.dump()

    def _refusal(self, request: tsp.TimeStampReq) -> Refusal | None:
        imprint = request["message_imprint"]
        algorithm = imprint["hash_algorithm"]["algorithm"].native
        if algorithm not in _DIGEST_SIZES:
            return Refusal("bad_alg", f"Hash algorithm {algorithm} is not accepted.")
        if len(imprint["hashed_message"].native) != _DIGEST_SIZES[algorithm]:
            return Refusal("bad_data_format", "The imprint's length does not fit its algorithm.")
        asked_policy = request["req_policy"].native
        if asked_policy is not None and asked_policy != self._policy:
            return Refusal("unaccepted_policy", f"Policy {asked_policy} is not this TSA's.")
        if request["extensions"].native:
            return Refusal("unaccepted_extension", "No request extension is supported.")
        return None

    def _token(self, request: tsp.TimeStampReq, now: datetime, serial: int) -> cms.ContentInfo:
        gen_time = _gen_time(now)
        fields: dict[str, object] = {
            "version": "v1",
            "policy": self._policy,
            "message_imprint": request["message_imprint"],
            "serial_number": serial,
            "gen_time": gen_time,
            "accuracy": {"seconds": 1},
            "ordering": False,
            "tsa": asn1_x509.GeneralName(name="directory_name", value=self._cert.subject),
        }
        if request["nonce"].native is not None:
            fields["nonce"] = request["nonce"]
        tst_info = tsp.TSTInfo(fields).dump()
        signed_attrs = cms.CMSAttributes(
            [
                _attribute("content_type", "tst_info"),
                _attribute("message_digest", hashlib.sha256(tst_info).digest()),
                _attribute("signing_time", cms.Time({"utc_time": core.UTCTime(gen_time)})),
                _attribute("signing_certificate_v2", self._signing_certificate),
            ]
        )
        signature = self._key.sign(signed_attrs.dump(), padding.PKCS1v15(), hashes.SHA256())
        digest_algorithm = algos.DigestAlgorithm({"algorithm": "sha256"})
        signer = cms.SignerInfo(
            {
                "version": "v1",
                "sid": {
                    "issuer_and_serial_number": {
                        "issuer": self._cert.issuer,
                        "serial_number": self._cert.serial_number,
                    }
                },
                "digest_algorithm": digest_algorithm,
                "signed_attrs": signed_attrs,
                "signature_algorithm": {"algorithm": "sha256_rsa"},
                "signature": signature,
            }
        )
        signed_data: dict[str, object] = {
            "version": "v3",
            "digest_algorithms": [digest_algorithm],
            "encap_content_info": {
                "content_type": "tst_info",
                "content": cms.ParsableOctetString(tst_info),
            },
            "signer_infos": [signer],
        }
        if request["cert_req"].native:
            signed_data["certificates"] = self._certificates
        return cms.ContentInfo({"content_type": "signed_data", "content": signed_data})


def _attribute(name: str, value: object) -> cms.CMSAttribute:
    return cms.CMSAttribute({"type": name, "values": [value]})


def _rejection(refusal: Refusal) -> bytes:
    status = {
        "status": "rejection",
        "status_string": [refusal.text],
        "fail_info": tsp.PKIFailureInfo({refusal.failure}),
    }
    return TimeStampReply({"status": status}).dump()


class TimeStampReply(core.Sequence):
    """TimeStampResp as RFC 3161 has it: asn1crypto's spec requires the token, which a
    rejection has not."""

    _fields = [  # noqa: RUF012 - asn1crypto's spec form
        ("status", tsp.PKIStatusInfo),
        ("time_stamp_token", cms.ContentInfo, {"optional": True}),
    ]


def _gen_time(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(microsecond=now.microsecond // 1000 * 1000)


def _usual_request(body: bytes, policy: bytes) -> tuple[bytes, bytes, bool] | None:
    """A request's imprint and nonce (DER) and certReq, if it is one that is granted.

    None (or ValueError) for any other: asn1crypto reads it, and refuses it if it must.
    """
    request = walk.element(body)
    if request.tag != walk.SEQUENCE or request.end != len(body):
        return None
    version, imprint, *rest = walk.children(body, request)
    if walk.whole(body, version) != b"\x02\x01\x01":
        return None
    algorithm, hashed = walk.tagged(body, imprint, walk.SEQUENCE, walk.OCTET_STRING)
    oid, *parameters = walk.children(body, algorithm)
    size = _DIGEST_OIDS.get(walk.whole(body, oid))
    if size is None or hashed.end - hashed.content != size:
        return None
    if parameters and [walk.whole(body, p) for p in parameters] != [b"\x05\x00"]:
        return None
    optional = _optional_fields(body, rest, policy)
    return None if optional is None else (walk.whole(body, imprint), *optional)


def _optional_fields(
    body: bytes, rest: list[walk.Element], policy: bytes
) -> tuple[bytes, bool] | None:
    """The nonce (DER, or empty) and certReq after the imprint; None if anything else."""
    by_tag = {part.tag: part for part in rest}  # reqPolicy, nonce, certReq; no extensions
    if [part.tag for part in rest] != [
        t for t in (walk.OID, walk.INTEGER, walk.BOOLEAN) if t in by_tag
    ]:
        return None
    asked_policy = by_tag.get(walk.OID)
    if asked_policy is not None and walk.whole(body, asked_policy) != policy:
        return None
    nonce = by_tag.get(walk.INTEGER)
    if nonce is not None:
        walk.unsigned(body, nonce)  # a negative nonce is asn1crypto's to judge
    cert_req = by_tag.get(walk.BOOLEAN)
    if cert_req is not None and walk.value(body, cert_req) not in (b"\x00", b"\xff"):
        return None
    return (
        b"" if nonce is None else walk.whole(body, nonce),
        cert_req is not None and walk.value(body, cert_req) == b"\xff",
    )


@dataclass(frozen=True)
class _Pieces:
    """The DER that is the same in every token of this TSA, and how the rest goes between."""

    policy: bytes  # the policy OID
    tsa: bytes  # [0] GeneralName: the TSA's name
    sid: bytes  # IssuerAndSerialNumber
    digest_algorithm: bytes
    signature_algorithm: bytes
    content_type: bytes  # the content-type attribute
    signing_certificate: bytes  # the ESS signing-certificate-v2 attribute
    certificates: bytes  # [0] IMPLICIT CertificateSet

    @classmethod
    def of(cls, authority: TimestampAuthority) -> _Pieces:
        cert = authority._cert
        sid = cms.IssuerAndSerialNumber(
            {"issuer": cert.issuer, "serial_number": cert.serial_number}
        )
        certificates = authority._certificates.dump()
        return cls(
            policy=core.ObjectIdentifier(authority._policy).dump(),
            tsa=walk.tlv(
                walk.EXPLICIT_0,
                asn1_x509.GeneralName(name="directory_name", value=cert.subject).dump(),
            ),
            sid=sid.dump(),
            digest_algorithm=algos.DigestAlgorithm({"algorithm": "sha256"}).dump(),
            signature_algorithm=algos.SignedDigestAlgorithm({"algorithm": "sha256_rsa"}).dump(),
            content_type=_attribute("content_type", "tst_info").dump(),
            signing_certificate=_attribute(
                "signing_certificate_v2", authority._signing_certificate
            ).dump(),
            certificates=walk.tlv(walk.EXPLICIT_0, certificates[_content_at(certificates) :]),
        )

    def response(
        self,
        imprint: bytes,
        nonce: bytes,
        cert_req: bool,
        now: datetime,
        serial: int,
        key: rsa.RSAPrivateKey,
    ) -> bytes:
        """The granted TimeStampResp's DER, as `TimestampAuthority._token` encodes it."""
        gen_time = _gen_time(now)
        tst_info = walk.tlv(
            walk.SEQUENCE,
            b"".join(
                (
                    b"\x02\x01\x01",  # v1
                    self.policy,
                    imprint,
                    walk.integer(serial),
                    core.GeneralizedTime(gen_time).dump(),
                    b"\x30\x03\x02\x01\x01",  # accuracy: 1 s
                    nonce,
                    self.tsa,
                )
            ),
        )
        digest = walk.tlv(walk.OCTET_STRING, hashlib.sha256(tst_info).digest())
        attributes = sorted(
            (
                self.content_type,
                walk.tlv(walk.SEQUENCE, _MESSAGE_DIGEST + walk.tlv(walk.SET, digest)),
                walk.tlv(
                    walk.SEQUENCE,
                    _SIGNING_TIME + walk.tlv(walk.SET, core.UTCTime(gen_time).dump()),
                ),
                self.signing_certificate,
            )
        )
        signed_attrs = b"".join(attributes)
        signature = key.sign(walk.tlv(walk.SET, signed_attrs), padding.PKCS1v15(), hashes.SHA256())
        signer = walk.tlv(
            walk.SEQUENCE,
            b"".join(
                (
                    b"\x02\x01\x01",  # v1
                    self.sid,
                    self.digest_algorithm,
                    walk.tlv(walk.EXPLICIT_0, signed_attrs),  # [0] IMPLICIT SET
                    self.signature_algorithm,
                    walk.tlv(walk.OCTET_STRING, signature),
                )
            ),
        )
        encap = walk.tlv(
            walk.SEQUENCE,
            _TST_INFO + walk.tlv(walk.EXPLICIT_0, walk.tlv(walk.OCTET_STRING, tst_info)),
        )
        signed_data = walk.tlv(
            walk.SEQUENCE,
            b"".join(
                (
                    b"\x02\x01\x03",  # v3
                    walk.tlv(walk.SET, self.digest_algorithm),
                    encap,
                    self.certificates if cert_req else b"",
                    walk.tlv(walk.SET, signer),
                )
            ),
        )
        token = walk.tlv(walk.SEQUENCE, _SIGNED_DATA + walk.tlv(walk.EXPLICIT_0, signed_data))
        return walk.tlv(walk.SEQUENCE, _GRANTED + token)


_MESSAGE_DIGEST = core.ObjectIdentifier("1.2.840.113549.1.9.4").dump()
_SIGNING_TIME = core.ObjectIdentifier("1.2.840.113549.1.9.5").dump()


def _content_at(der: bytes) -> int:
    return walk.element(der).content
