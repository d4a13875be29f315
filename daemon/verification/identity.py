"""What a signer's certificate says about its holder: the school, and the role it signs.

For a verifier that has only the file. The school is the subject's
organizationIdentifier (2.5.4.97, ETSI EN 319 412-1), after an optional prefix; the
role is what `[verification] roles` maps a certificate policy OID or the subject's
title (2.5.4.12) to. A certificate whose claims map to two roles has no role.
These claims count only for a certificate that chains to a trusted root.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from asn1crypto import x509

from daemon.settings import VerificationSettings
from daemon.stages import Stage


@dataclass(frozen=True)
class SignerIdentity:
    """One certificate's holder as a verifier sees it; `key_id` tells signers apart."""

    subject: str
    cert_serial: str
    school_id: str | None
    role: Stage | None
    key_id: str
    # SHA-256 of the certificate's DER: the exact certificate, issuer and serial both.
    cert_sha256: str = ""
    # `certificate`, or `registry` when the registry gave school and role (signer_id then).
    basis: str = "certificate"
    signer_id: str | None = None


def identify(cert: x509.Certificate, rules: VerificationSettings) -> SignerIdentity:
    return SignerIdentity(
        subject=common_name(cert),
        cert_serial=format(cert.serial_number, "x"),
        school_id=school_of(cert, rules),
        role=role_of(cert, rules),
        # The key, not the certificate: two certificates on one key are one signer.
        key_id=hashlib.sha256(cert.public_key.dump()).hexdigest(),
        cert_sha256=hashlib.sha256(cert.dump()).hexdigest(),
    )


def school_of(cert: x509.Certificate, rules: VerificationSettings) -> str | None:
    value = cert.subject.native.get("organization_identifier")
    if not isinstance(value, str) or not value.startswith(rules.school_id_prefix):
        return None
    return value.removeprefix(rules.school_id_prefix) or None


def role_of(cert: x509.Certificate, rules: VerificationSettings) -> Stage | None:
    claims = [*policies(cert), *_titles(cert)]
    roles = {Stage(rules.roles[c]) for c in claims if c in rules.roles}
    return roles.pop() if len(roles) == 1 else None


def policies(cert: x509.Certificate) -> list[str]:
    value = cert.certificate_policies_value
    if value is None:
        return []
    return [str(p["policy_identifier"].dotted) for p in value]


def _titles(cert: x509.Certificate) -> list[str]:
    title = cert.subject.native.get("title")
    if title is None:
        return []
    return [str(t) for t in title] if isinstance(title, list) else [str(title)]


def common_name(cert: x509.Certificate) -> str:
    name = cert.subject.native
    return str(name.get("common_name") or cert.subject.human_friendly)
