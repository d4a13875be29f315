"""Whether a signer can be registered: its key and certificate in the token, and what they say.

A signer `<school_id>/<signer_id>` is registered only if the token holds exactly one
private key and one certificate under that label; the certificate is for that key
(its public key is the token's public key object under the label, or the private
key's own public numbers); it is valid now and allows signing (daemon/hsm.py's
`check_certificate`, as signing checks it); and it names the school and the role the
signer is registered for, as a verifier reads them (daemon/verification/identity.py).
Each failure is one sentence naming the label and the certificate's serial.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from asn1crypto import x509

from daemon.errors import CertificateInvalid, UnknownSigner
from daemon.hsm import check_certificate
from daemon.registry.token import KeyObject, LabelContents
from daemon.settings import VerificationSettings
from daemon.stages import Stage
from daemon.verification import identity


@dataclass(frozen=True)
class CheckedCertificate:
    """What the registry keeps of a signer's certificate."""

    serial: str
    not_after: datetime
    sha256: str


def key_label(school_id: str, signer_id: str) -> str:
    return f"{school_id}/{signer_id}"


def check_signer(
    school_id: str,
    stage: Stage,
    label: str,
    found: LabelContents,
    now: datetime,
    rules: VerificationSettings,
) -> CheckedCertificate:
    """The certificate under `label`, if the signer may be registered; raise why not."""
    private = _exactly_one_key(label, found)
    cert = _exactly_one_certificate(label, found)
    serial = format(cert.serial_number, "x")
    _same_key(label, serial, cert, private, found.public_keys)
    check_certificate(cert, now)
    school = identity.school_of(cert, rules)
    if school != school_id:
        named = f"school {school}" if school else "no school (organizationIdentifier)"
        raise CertificateInvalid(
            f"certificate {serial} under {label} names {named}, not school {school_id}"
        )
    role = identity.role_of(cert, rules)
    if role is not stage:
        named = f"role {role}" if role else "no role this deployment knows"
        raise CertificateInvalid(
            f"certificate {serial} under {label} names {named}, not {stage} "
            "(its certificate policy or title; see [verification] roles)"
        )
    return CheckedCertificate(serial, cert.not_valid_after, hashlib.sha256(cert.dump()).hexdigest())


def _exactly_one_key(label: str, found: LabelContents) -> KeyObject:
    count = len(found.private_keys)
    if count == 0:
        raise UnknownSigner(f"no key labelled {label} in the token")
    if count > 1:
        raise UnknownSigner(f"{count} keys labelled {label} in the token; exactly one is needed")
    key = found.private_keys[0]
    if key.key_type != "RSA":
        raise CertificateInvalid(
            f"the key labelled {label} is {key.key_type}; this deployment signs with RSA"
        )
    return key


def _exactly_one_certificate(label: str, found: LabelContents) -> x509.Certificate:
    count = len(found.certificates)
    if count == 0:
        raise UnknownSigner(f"no certificate labelled {label} in the token")
    if count > 1:
        raise UnknownSigner(
            f"{count} certificates labelled {label} in the token; exactly one is needed"
        )
    try:
        cert = x509.Certificate.load(found.certificates[0])
        cert.native  # noqa: B018 - parses every field now, not halfway through a check
    except ValueError as exc:
        raise CertificateInvalid(f"the certificate labelled {label} is not X.509 DER") from exc
    return cert


def _same_key(
    label: str,
    serial: str,
    cert: x509.Certificate,
    private: KeyObject,
    public_keys: tuple[KeyObject, ...],
) -> None:
    """The certificate's public key must be the key's: else it signs for someone else."""
    info = cert.public_key
    if info.algorithm != "rsa":
        raise CertificateInvalid(f"certificate {serial} under {label} is not for an RSA key")
    numbers = info["public_key"].parsed
    certified = (numbers["modulus"].native, numbers["public_exponent"].native)
    held = [(k.modulus, k.public_exponent) for k in (*public_keys, private) if k.modulus]
    if not held:
        raise UnknownSigner(f"no public key labelled {label} in the token to compare with")
    if any(pair != certified for pair in held):
        raise CertificateInvalid(
            f"certificate {serial} under {label} is for another key than the one labelled {label}"
        )
