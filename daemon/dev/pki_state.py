"""The dev PKI's files: where its online services answer, and which serials are revoked.

`services.json` (the base URL, written before the signers' certificates so that their
AIA and CRL distribution points name it) and `revoked.json` (serial -> revocation
time, read by every answer, so `hocba-signer dev revoke` takes effect at once).
daemon/dev/pki.py reads the pointers when it issues certificates; daemon/dev/pki_services.py
serves the answers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID

SERVICES_FILE = "services.json"
REVOKED_FILE = "revoked.json"
DEFAULT_PORT = 9475
# How long an OCSP answer or a CRL is fresh (its nextUpdate): short, so that a
# revocation in a rehearsal reaches every cache within minutes.
DEFAULT_VALIDITY_S = 300


@dataclass(frozen=True)
class ServicesConfig:
    url: str
    validity_s: int = DEFAULT_VALIDITY_S

    @property
    def ocsp_url(self) -> str:
        return f"{self.url}/ocsp"

    @property
    def crl_url(self) -> str:
        return f"{self.url}/crl/issuing.crl"

    @property
    def root_crl_url(self) -> str:
        return f"{self.url}/crl/root.crl"

    @property
    def tsa_url(self) -> str:
        return f"{self.url}/tsa"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 80


def configure(
    pki: Path, port: int = DEFAULT_PORT, *, validity_s: int = DEFAULT_VALIDITY_S
) -> ServicesConfig:
    """Write (or keep) `services.json` and the TSA certificate; the services' addresses.

    An existing configuration is kept, since certificates already issued name its URL.
    """
    pki.mkdir(parents=True, exist_ok=True, mode=0o700)
    config = load_config(pki)
    if config is None:
        config = ServicesConfig(f"http://127.0.0.1:{port}", validity_s)
        (pki / SERVICES_FILE).write_text(
            json.dumps({"url": config.url, "validity_s": config.validity_s}), "utf-8"
        )
    return config


def load_config(pki: Path) -> ServicesConfig | None:
    path = pki / SERVICES_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text("utf-8"))
    return ServicesConfig(str(data["url"]), int(data.get("validity_s", DEFAULT_VALIDITY_S)))


def status_pointers(pki: Path) -> list[x509.ExtensionType]:
    """AIA (OCSP) and CRL distribution point extensions for a certificate the issuing CA signs.

    None when the dev PKI has no services configured: such certificates declare no
    status source, and are not checked (as pyHanko's hard-fail mode does).
    """
    config = load_config(pki)
    if config is None:
        return []
    aia = x509.AuthorityInformationAccess(
        [
            x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(config.ocsp_url)
            )
        ]
    )
    crldp = x509.CRLDistributionPoints(
        [x509.DistributionPoint([x509.UniformResourceIdentifier(config.crl_url)], None, None, None)]
    )
    return [aia, crldp]


def ca_status_pointers(pki: Path) -> list[x509.ExtensionType]:
    """The CRL distribution point of the root's CRL, for the issuing CA's certificate."""
    config = load_config(pki)
    if config is None:
        return []
    point = x509.DistributionPoint(
        [x509.UniformResourceIdentifier(config.root_crl_url)], None, None, None
    )
    return [x509.CRLDistributionPoints([point])]


# Revocation state


def revoked(pki: Path) -> dict[int, datetime]:
    """Serial number -> revocation time, as `revoke` recorded them."""
    path = pki / REVOKED_FILE
    if not path.exists():
        return {}
    data = json.loads(path.read_text("utf-8"))
    return {int(serial, 16): datetime.fromisoformat(at) for serial, at in data.items()}


def revoke(pki: Path, serial_hex: str, at: datetime | None = None) -> bool:
    """Record `serial_hex` as revoked (atomically); False if it already was."""
    current = {format(s, "x"): t.isoformat() for s, t in revoked(pki).items()}
    serial = format(int(serial_hex, 16), "x")
    if serial in current:
        return False
    current[serial] = (at or datetime.now(UTC)).replace(microsecond=0).isoformat()
    partial = pki / f".{REVOKED_FILE}.tmp"
    partial.write_text(json.dumps(current, indent=1, sort_keys=True), "utf-8")
    os.replace(partial, pki / REVOKED_FILE)
    return True
