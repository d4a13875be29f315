"""The dev PKI's online services: an OCSP responder, a CRL and an RFC 3161 TSA.

A real PKI answers "is this certificate revoked?" and "what time is it, signed?"; the
dev one (daemon/dev/pki.py) must too, so that signatures at B-T and above can be made
and checked on one machine. Everything is served by one small aiohttp app on loopback:

    POST {url}/ocsp               OCSP (RFC 6960), signed by the issuing CA itself
    GET  {url}/crl/issuing.crl    the issuing CA's CRL (DER); /crl/root.crl the root's
    POST {url}/tsa                timestamps (RFC 3161) by a TSA certificate of the issuing CA

Why not certomancer's animator: it serves a PKI it holds every key of, described in
its own YAML, while the signers' keys here are generated inside SoftHSM and certified
by pki.py's issuing CA; mirroring that CA into certomancer would make two PKIs to keep
in step. pyca/cryptography (already a dependency) builds OCSP responses and CRLs from
the certificate's serial alone, and daemon/dev/tsa.py answers timestamp requests
with its key loaded once (pyHanko's `DummyTimeStamper` reloads it for every token,
49 ms each); each handler is a few lines.

Files under `pki/`: `services.json` (the base URL, written before the signers'
certificates so that their AIA and CRL distribution points name it), `tsa.key`,
`tsa.pem`, and `revoked.json` (serial -> revocation time), which every answer reads,
so `hocba-signer dev revoke` takes effect at once and survives restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from daemon.dev.pki_state import (
    DEFAULT_PORT,
    DEFAULT_VALIDITY_S,
    REVOKED_FILE,
    SERVICES_FILE,
    ServicesConfig,
    ca_status_pointers,
    configure,
    load_config,
    revoke,
    revoked,
    status_pointers,
)
from daemon.dev.tsa import TimestampAuthority
from daemon.errors import ConfigError

log = logging.getLogger(__name__)

# The services' addresses and the revocation state live in pki_state; re-exported here.
__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_VALIDITY_S",
    "REVOKED_FILE",
    "SERVICES_FILE",
    "TSA_VALIDITY",
    "Hold",
    "Running",
    "ServicesConfig",
    "build_app",
    "ca_status_pointers",
    "configure",
    "ensure_tsa",
    "load_config",
    "revoke",
    "revoked",
    "running",
    "status_pointers",
]

TSA_VALIDITY = timedelta(days=10 * 365)


# Keys and the TSA certificate


@dataclass(frozen=True)
class _Authority:
    cert: x509.Certificate
    key: rsa.RSAPrivateKey


def _load_authority(cert_path: Path, key_path: Path) -> _Authority:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot read {cert_path.name} or {key_path.name}: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{key_path.name} is not an RSA key.")
    return _Authority(cert, key)


def ensure_tsa(pki: Path, validity: timedelta = TSA_VALIDITY) -> Path:
    """The TSA's key and certificate (issued by the issuing CA), made once; its PEM path."""
    pem = pki / "tsa.pem"
    if pem.exists():
        return pem
    issuing = _load_authority(pki / "issuing.pem", pki / "issuing.key")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "So GDDT (dev)"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Hocba Dev TSA"),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuing.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuing.key.public_key()), False
        )
    )
    for extension in status_pointers(pki):
        builder = builder.add_extension(extension, critical=False)
    cert = builder.sign(issuing.key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(pki / "tsa.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_pem)
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return pem


# The services


@dataclass(frozen=True)
class Hold:
    """A service held back: `arrived` once a request waits, which answers on `release`."""

    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        self.released.set()


class _Services:
    def __init__(self, pki: Path, config: ServicesConfig) -> None:
        self.pki = pki
        self.validity = timedelta(seconds=config.validity_s)
        self.issuing = _load_authority(pki / "issuing.pem", pki / "issuing.key")
        self.root = _load_authority(pki / "root.pem", pki / "root.key")
        tsa = _load_authority(pki / "tsa.pem", pki / "tsa.key")
        der = serialization.Encoding.DER
        self.tsa = TimestampAuthority(
            tsa.cert.public_bytes(der), tsa.key, [self.issuing.cert.public_bytes(der)]
        )
        self.counts = {"ocsp": 0, "crl": 0, "tsa": 0}
        # Services answering 503, for rehearsing a responder or TSA outage.
        self.down: set[str] = set()
        # Services that answer only once released, for rehearsing a slow responder.
        self.held: dict[str, Hold] = {}

    @web.middleware
    async def outages(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        name = request.path.strip("/").split("/")[0]
        if name in self.down:
            return web.Response(status=503, text=f"{name} is down (rehearsal).")
        if name in self.counts:
            self.counts[name] += 1
        held = self.held.get(name)
        if held is not None:
            held.arrived.set()
            await held.released.wait()
        return await handler(request)

    async def ocsp(self, request: web.Request) -> web.Response:
        try:
            asked = ocsp.load_der_ocsp_request(await request.read())
        except ValueError:
            return _ocsp_error(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        issuing = self.issuing.cert
        if asked.issuer_key_hash != _key_hash(issuing, asked.hash_algorithm):
            return _ocsp_error(ocsp.OCSPResponseStatus.UNAUTHORIZED)
        now = datetime.now(UTC).replace(microsecond=0)
        revoked_at = revoked(self.pki).get(asked.serial_number)
        status = ocsp.OCSPCertStatus.REVOKED if revoked_at else ocsp.OCSPCertStatus.GOOD
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response_by_hash(
                issuer_name_hash=asked.issuer_name_hash,
                issuer_key_hash=asked.issuer_key_hash,
                serial_number=asked.serial_number,
                algorithm=asked.hash_algorithm,
                cert_status=status,
                this_update=now,
                next_update=now + self.validity,
                revocation_time=revoked_at,
                revocation_reason=x509.ReasonFlags.key_compromise if revoked_at else None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, issuing)
        )
        for extension in asked.extensions:
            if isinstance(extension.value, x509.OCSPNonce):
                builder = builder.add_extension(extension.value, critical=False)
        answer = builder.sign(self.issuing.key, hashes.SHA256())
        body = answer.public_bytes(serialization.Encoding.DER)
        return web.Response(body=body, content_type="application/ocsp-response")

    async def crl(self, request: web.Request) -> web.Response:
        """The issuing CA's CRL, or the root's (which lists no revoked CA: dev revokes signers)."""
        is_root = request.match_info["name"] == "root"
        authority = self.root if is_root else self.issuing
        now = datetime.now(UTC).replace(microsecond=0)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(authority.cert.subject)
            .last_update(now)
            .next_update(now + self.validity)
            .add_extension(x509.CRLNumber(int(now.timestamp())), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
                critical=False,
            )
        )
        for serial, at in sorted(revoked(self.pki).items()) if not is_root else ():
            entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(at)
            builder = builder.add_revoked_certificate(entry.build())
        crl = builder.sign(authority.key, hashes.SHA256())
        body = crl.public_bytes(serialization.Encoding.DER)
        return web.Response(body=body, content_type="application/pkix-crl")

    async def timestamp(self, request: web.Request) -> web.Response:
        answer = self.tsa.respond(await request.read())
        return web.Response(body=answer, content_type="application/timestamp-reply")


def _key_hash(cert: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    """The OCSP issuerKeyHash: the hash of the public key's BIT STRING value."""
    spki = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER)).public_key
    digest = hashes.Hash(algorithm)
    digest.update(bytes(spki["public_key"].contents[1:]))  # without the unused-bits byte
    return digest.finalize()


def _ocsp_error(status: ocsp.OCSPResponseStatus) -> web.Response:
    body = ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
        serialization.Encoding.DER
    )
    return web.Response(body=body, content_type="application/ocsp-response")


def build_app(pki: Path, config: ServicesConfig) -> tuple[web.Application, _Services]:
    services = _Services(pki, config)
    app = web.Application(client_max_size=64 * 1024, middlewares=[services.outages])
    app.router.add_post("/ocsp", services.ocsp)
    app.router.add_get("/crl/{name:issuing|root}.crl", services.crl)
    app.router.add_post("/tsa", services.timestamp)
    return app, services


@dataclass(frozen=True)
class Running:
    """The services being served: their addresses, request counts and outage switches."""

    config: ServicesConfig
    _services: _Services

    @property
    def counts(self) -> dict[str, int]:
        """Requests answered so far, by service (ocsp, crl, tsa)."""
        return dict(self._services.counts)

    def set_down(self, *names: str) -> None:
        """Make these services (ocsp, crl, tsa) answer 503 until set_down() is called again."""
        self._services.down = set(names)

    def hold(self, name: str) -> Hold:
        """Make service `name` answer only once the hold is released."""
        held = self._services.held[name] = Hold()
        return held


@contextlib.asynccontextmanager
async def running(pki: Path, host: str = "127.0.0.1") -> AsyncIterator[Running]:
    """Serve the dev OCSP responder, CRL and TSA on the port `services.json` names."""
    config = load_config(pki)
    if config is None:
        raise ConfigError(
            f"No dev PKI services are configured in {pki} (dev init provisions them)."
        )
    ensure_tsa(pki)
    app, services = build_app(pki, config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, config.port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"Cannot serve the dev PKI services on port {config.port}: {exc}"
            ) from exc
        log.info("Dev PKI services (OCSP, CRL, TSA) on %s.", config.url)
        yield Running(config, services)
    finally:
        await runner.cleanup()
