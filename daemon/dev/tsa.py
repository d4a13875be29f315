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

# The dev TSA's policy: an OID under the UUID arc (2.25), made once for this project.
POLICY = "2.25.229181433419640395512925101371349346101"
_DIGEST_SIZES = {"sha256": 32, "sha384": 48, "sha512": 64}


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

    def respond(self, body: bytes, now: datetime | None = None) -> bytes:
        """The DER answer to a DER request: a granted token, or a rejection saying why."""
        try:
            request = tsp.TimeStampReq.load(body)
            request.native  # noqa: B018 - parses it all now, so a bad request fails here
        except ValueError:
            return _rejection(Refusal("bad_data_format", "The request cannot be read."))
        refusal = self._refusal(request)
        if refusal is not None:
            return _rejection(refusal)
        token = self._token(request, now or datetime.now(UTC))
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

    def _token(self, request: tsp.TimeStampReq, now: datetime) -> cms.ContentInfo:
        gen_time = now.astimezone(UTC).replace(microsecond=now.microsecond // 1000 * 1000)
        fields: dict[str, object] = {
            "version": "v1",
            "policy": self._policy,
            "message_imprint": request["message_imprint"],
            "serial_number": secrets.randbits(64),
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
