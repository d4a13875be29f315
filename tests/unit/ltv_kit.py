"""A CA, the dev TSA it certifies and a CRL it signs, for the unit tests of the LTV writers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from asn1crypto import algos, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from daemon.dev import pki_services
from daemon.dev.tsa import TimestampAuthority


def make_ca(
    pki: Path,
    name: str,
    key_name: str,
    issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None = None,
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A CA certificate and key (self-signed, or by `issuer`), written to `key_name`.pem/.key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(issuer_key, hashes.SHA256())
    )
    (pki / f"{key_name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (pki / f"{key_name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


class LtvServices:
    """A CA issuing the dev TSA's certificate and a CRL, in a directory of their own."""

    def __init__(self, pki: Path) -> None:
        ca, key = make_ca(pki, "Test LTV CA", "issuing")
        name, now, der = ca.subject, datetime.now(UTC), serialization.Encoding.DER
        pki_services.ensure_tsa(pki)
        tsa_cert = x509.load_pem_x509_certificate((pki / "tsa.pem").read_bytes())
        tsa_key = serialization.load_pem_private_key((pki / "tsa.key").read_bytes(), None)
        assert isinstance(tsa_key, rsa.RSAPrivateKey)
        self.ca = asn1_x509.Certificate.load(ca.public_bytes(der))
        self.tsa_cert = asn1_x509.Certificate.load(tsa_cert.public_bytes(der))
        self.authority = TimestampAuthority(self.tsa_cert.dump(), tsa_key, [self.ca.dump()])
        self.crl = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(name)
            .last_update(now)
            .next_update(now + timedelta(days=7))
            .sign(key, hashes.SHA256())
            .public_bytes(der)
        )

    def token(self, digest: bytes) -> bytes:
        """A granted token's DER over `digest` (SHA-256)."""
        request = tsp.TimeStampReq(
            {
                "version": "v1",
                "message_imprint": {
                    "hash_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
                    "hashed_message": digest,
                },
                "cert_req": True,
            }
        )
        reply = tsp.TimeStampResp.load(self.authority.respond(request.dump()))
        assert reply["status"]["status"].native == "granted"
        return bytes(reply["time_stamp_token"].dump())
