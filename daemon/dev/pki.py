"""Development PKI and SoftHSM token, for `hocba-signer dev init`, the demo and tests.

Layout under `base_dir`:

    softhsm2.conf           SOFTHSM2_CONF for this token store
    tokens/                 SoftHSM token files (the signers' private keys live here)
    pki/root.key, root.pem  self-signed root CA; root.pem is the only trust root needed
    pki/issuing.key, .pem   issuing CA, signs every signer certificate

Each signer's key pair is generated inside the token and never leaves it; its
certificate is stored beside it under the same label, `<school_id>/<signer_id>`, and
the issuing CA certificate under `CHAIN_CERT_LABEL`. Every step skips what exists.

A signer certificate says who may sign what, for a verifier that has only the file
(daemon.verification.identity): subject O = the school's name, organizationIdentifier
(2.5.4.97) = the school id, title (2.5.4.12) = the role in words, and a certificate
policy OID per role (`DEV_ROLE_POLICIES`). A certificate issued before they were
added is issued again, on the same key, by the next `dev init`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path

import pkcs11
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier
from pkcs11 import Attribute, CertificateType, KeyType, ObjectClass

from daemon.dev.pki_state import ca_status_pointers, status_pointers
from daemon.dev.softhsm import SOFTHSM_MODULE
from daemon.hsm import CHAIN_CERT_LABEL
from daemon.settings import DEV_ROLE_POLICIES
from daemon.stages import Stage

SIGNER_VALIDITY = timedelta(days=3 * 365)
CA_VALIDITY = timedelta(days=10 * 365)
ROLE_POLICY = {Stage(role): oid for oid, role in DEV_ROLE_POLICIES.items()}
ROLE_TITLE = {
    Stage.HOMEROOM_TEACHER: "Giao vien chu nhiem",
    Stage.PRINCIPAL: "Hieu truong",
    Stage.SCHOOL_SEAL: "Con dau to chuc",
}


@dataclass(frozen=True)
class SignerSpec:
    school_id: str
    signer_id: str
    stage: Stage
    display_name: str
    # For tests and rehearsals: issue a certificate that expired yesterday, or one
    # that only becomes valid tomorrow.
    expired: bool = False
    not_yet_valid: bool = False

    @property
    def key_label(self) -> str:
        return f"{self.school_id}/{self.signer_id}"


@dataclass(frozen=True)
class ProvisionedSigner:
    school_id: str
    signer_id: str
    stage: Stage
    key_label: str
    cert_serial: str
    not_after: datetime


@dataclass(frozen=True)
class ProvisionResult:
    root_pem: Path
    token_label: str
    env: dict[str, str]
    signers: tuple[ProvisionedSigner, ...]


def school_signers(school_id: str, teachers: int = 2) -> list[SignerSpec]:
    """The dev signers of one school: homeroom teachers, a principal, the seal."""
    specs = [
        SignerSpec(school_id, f"GV-{n:04d}", Stage.HOMEROOM_TEACHER, f"Giao vien {n:04d}")
        for n in range(1, teachers + 1)
    ]
    specs.append(SignerSpec(school_id, "BGH-0001", Stage.PRINCIPAL, "Hieu truong"))
    specs.append(SignerSpec(school_id, "SEAL", Stage.SCHOOL_SEAL, f"Truong Tieu hoc {school_id}"))
    return specs


def provision(
    base_dir: Path,
    *,
    token_label: str,
    pin: str,
    schools: Sequence[str],
    module: Path = SOFTHSM_MODULE,
    env: Mapping[str, str] | None = None,
    extra_signers: Sequence[SignerSpec] = (),
) -> ProvisionResult:
    """Create the CAs, and each school's signer keys and certificates in the token."""
    pki = base_dir / "pki"
    root_pem = _ensure_cas(pki)
    specs = [spec for school in schools for spec in school_signers(school)]
    specs.extend(extra_signers)
    job = _TokenJob(module, dict(env or {}), token_label, pin, pki, tuple(specs))
    # One pkcs11.lib per process: the token work runs in a child process of its
    # own, so this process stays free to provision other tokens or host a pool.
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        signers = pool.submit(_provision_token, job).result()
    return ProvisionResult(root_pem, token_label, dict(env or {}), tuple(signers))


def _ensure_cas(pki: Path) -> Path:
    pki.mkdir(parents=True, exist_ok=True, mode=0o700)
    root_key = _ensure_key(pki / "root.key")
    root_name = _name("Hocba Dev Root CA")
    if not (pki / "root.pem").exists():
        root = _ca_cert(root_name, root_key, root_name, root_key, path_length=1)
        _write_cert(pki / "root.pem", root)
    issuing_key = _ensure_key(pki / "issuing.key")
    if not (pki / "issuing.pem").exists():
        issuing = _ca_cert(
            _name("Hocba Dev Issuing CA"), issuing_key, root_name, root_key, path_length=0,
            pointers=ca_status_pointers(pki),  # the root's CRL, when dev services exist
        )  # fmt: skip
        _write_cert(pki / "issuing.pem", issuing)
    return pki / "root.pem"


def _name(common_name: str, organisation: str = "So GDDT (dev)") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ensure_key(path: Path) -> rsa.RSAPrivateKey:
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return key
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return key


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _ca_cert(
    subject: x509.Name,
    key: rsa.RSAPrivateKey,
    issuer: x509.Name,
    issuer_key: rsa.RSAPrivateKey,
    path_length: int,
    pointers: Sequence[x509.ExtensionType] = (),
) -> x509.Certificate:
    now = datetime.now(UTC)
    usage = x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True,
        crl_sign=True, encipher_only=False, decipher_only=False,
    )  # fmt: skip
    builder = (
        _builder(subject, issuer, key.public_key(), issuer_key, now - timedelta(hours=1))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), True)
        .add_extension(usage, critical=True)
    )
    for pointer in pointers:
        builder = builder.add_extension(pointer, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: rsa.RSAPublicKey,
    issuer_key: rsa.RSAPrivateKey,
    not_before: datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )


@dataclass(frozen=True)
class _TokenJob:
    module: Path
    env: dict[str, str]
    token_label: str
    pin: str
    pki: Path
    specs: tuple[SignerSpec, ...]

    def __repr__(self) -> str:
        return f"_TokenJob(token_label={self.token_label!r}, specs={len(self.specs)})"


def _provision_token(job: _TokenJob) -> list[ProvisionedSigner]:
    """Runs in a spawned child: one library, one login, closed before returning."""
    os.environ.update(job.env)
    issuing_key = _ensure_key(job.pki / "issuing.key")
    issuing = x509.load_pem_x509_certificate((job.pki / "issuing.pem").read_bytes())
    lib = pkcs11.lib(str(job.module))
    try:
        token = lib.get_token(token_label=job.token_label)
        with token.open(rw=True, user_pin=job.pin) as session:
            _ensure_cert_object(session, CHAIN_CERT_LABEL, b"ca-issuing", issuing)
            pointers = status_pointers(job.pki)  # OCSP and CRL, when dev services exist
            return [_ensure_signer(session, s, issuing_key, issuing, pointers) for s in job.specs]
    finally:
        lib.finalize()


def _ensure_signer(
    session: pkcs11.Session,
    spec: SignerSpec,
    issuing_key: rsa.RSAPrivateKey,
    issuing: x509.Certificate,
    pointers: Sequence[x509.ExtensionType] = (),
) -> ProvisionedSigner:
    label = spec.key_label
    key_id = hashlib.sha256(label.encode()).digest()[:16]
    cert = _find_cert(session, label)
    if cert is not None and not _says_role(cert, spec.stage):
        _delete_cert_object(session, label)
        cert = None
    if cert is None:
        public_key = _ensure_keypair(session, label, key_id)
        cert = _signer_cert(spec, public_key, issuing_key, issuing, pointers)
        _ensure_cert_object(session, label, key_id, cert)
    return ProvisionedSigner(
        school_id=spec.school_id,
        signer_id=spec.signer_id,
        stage=spec.stage,
        key_label=label,
        cert_serial=format(cert.serial_number, "x"),
        not_after=cert.not_valid_after_utc,
    )


def _says_role(cert: x509.Certificate, stage: Stage) -> bool:
    try:
        policies = cert.extensions.get_extension_for_class(x509.CertificatePolicies).value
    except x509.ExtensionNotFound:
        return False
    return any(p.policy_identifier.dotted_string == ROLE_POLICY[stage] for p in policies)


def _delete_cert_object(session: pkcs11.Session, label: str) -> None:
    query = {Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.LABEL: label}
    for found in list(session.get_objects(query)):
        found.destroy()


def _find_cert(session: pkcs11.Session, label: str) -> x509.Certificate | None:
    query = {Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.LABEL: label}
    found = list(session.get_objects(query))
    return x509.load_der_x509_certificate(found[0][Attribute.VALUE]) if found else None


def _ensure_keypair(session: pkcs11.Session, label: str, key_id: bytes) -> rsa.RSAPublicKey:
    query = {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: label}
    found = list(session.get_objects(query))
    if found:
        public = found[0]
    else:
        public, _ = session.generate_keypair(
            KeyType.RSA,
            2048,
            id=key_id,
            label=label,
            store=True,
            public_template={Attribute.VERIFY: True},
            private_template={
                Attribute.SIGN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
            },
        )
    modulus = int.from_bytes(public[Attribute.MODULUS], "big")
    exponent = int.from_bytes(public[Attribute.PUBLIC_EXPONENT], "big")
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


def _signer_cert(
    spec: SignerSpec,
    public_key: rsa.RSAPublicKey,
    issuing_key: rsa.RSAPrivateKey,
    issuing: x509.Certificate,
    pointers: Sequence[x509.ExtensionType] = (),
) -> x509.Certificate:
    now = datetime.now(UTC)
    start = now - (SIGNER_VALIDITY if spec.expired else timedelta(hours=1))
    end = now - timedelta(days=1) if spec.expired else now + SIGNER_VALIDITY
    if spec.not_yet_valid:
        start, end = now + timedelta(days=1), now + SIGNER_VALIDITY
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=True, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=False,
        crl_sign=False, encipher_only=False, decipher_only=False,
    )  # fmt: skip
    policy = x509.PolicyInformation(ObjectIdentifier(ROLE_POLICY[spec.stage]), None)
    builder = (
        _builder(_signer_name(spec), issuing.subject, public_key, issuing_key, start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(usage, critical=True)
        .add_extension(x509.CertificatePolicies([policy]), critical=False)
    )
    for pointer in pointers:  # AIA (OCSP) and CRL distribution points
        builder = builder.add_extension(pointer, critical=False)
    return builder.sign(issuing_key, hashes.SHA256())


def _signer_name(spec: SignerSpec) -> x509.Name:
    """CN the holder, O and organizationIdentifier the school, title the role."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"Truong Tieu hoc {spec.school_id}"),
            x509.NameAttribute(NameOID.ORGANIZATION_IDENTIFIER, spec.school_id),
            x509.NameAttribute(NameOID.TITLE, ROLE_TITLE[spec.stage]),
            x509.NameAttribute(NameOID.COMMON_NAME, spec.display_name),
        ]
    )


def _ensure_cert_object(
    session: pkcs11.Session, label: str, key_id: bytes, cert: x509.Certificate
) -> None:
    if _find_cert(session, label) is not None:
        return
    session.create_object(
        {
            Attribute.CLASS: ObjectClass.CERTIFICATE,
            Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: False,
            Attribute.LABEL: label,
            Attribute.ID: key_id,
            Attribute.SUBJECT: cert.subject.public_bytes(),
            Attribute.ISSUER: cert.issuer.public_bytes(),
            Attribute.VALUE: cert.public_bytes(serialization.Encoding.DER),
        }
    )
