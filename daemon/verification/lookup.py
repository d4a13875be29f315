"""Whether a file is a version registered here, and who its signers are: read-only.

For the verification server, `verify --config` and the printed copy. A version is
named by its sha256 (record_versions); the answer carries the school and record ids,
the version, the record's state and when each stage was signed, never the student or
the signers' ids. `signers` says who the registry has each certificate as (school,
stage, signer id, active, when), for the verdict to judge by; it is not shown to the
public. Every query runs in a READ ONLY transaction, so this module cannot write even
by mistake.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from daemon.database import Database
from daemon.errors import DatabaseUnavailable
from daemon.stages import ORDER, Stage
from daemon.verification.verdict import RecordVerdict, RegisteredSigner, Registry

SHA256 = re.compile(r"[0-9a-f]{64}")

_VERSION = """
SELECT v.school_id, v.record_id, v.version, r.state, r.signatures,
       r.current_sha256 = v.sha256 AS current, s.name AS school_name,
       c.record_id AS replaced_by, c.current_sha256 AS replaced_by_sha256
FROM record_versions v
JOIN records r USING (school_id, record_id)
JOIN schools s USING (school_id)
LEFT JOIN LATERAL (
    SELECT c.record_id, c.current_sha256 FROM records c
    WHERE c.school_id = r.school_id AND c.corrects = r.record_id AND c.signatures = 3
    ORDER BY c.created_at LIMIT 1
) AS c ON true
WHERE v.sha256 = $1
ORDER BY (r.current_sha256 = v.sha256) DESC, v.version DESC
LIMIT 1
"""

_SIGNED = """
SELECT stage, signed_at FROM signatures WHERE school_id = $1 AND record_id = $2
"""


@dataclass(frozen=True)
class Registered:
    """What the registry says of one exact file.

    `state`: `issued` (the issued version of a record nothing replaced), `superseded`
    (a correction replaced the record, or a later version replaced this one),
    `in_progress` (the current version of a record not yet sealed), `unknown`.
    """

    sha256: str
    state: str
    school_id: str | None = None
    school_name: str | None = None
    record_id: str | None = None
    version: int | None = None
    record_state: str | None = None
    replaced_by: str | None = None
    # The issued version of the correction that replaced the record.
    replaced_by_sha256: str | None = None
    signed: list[dict[str, str]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "registered": self.state != "unknown",
            "state": self.state,
            "school_id": self.school_id,
            "school_name": self.school_name,
            "record_id": self.record_id,
            "version": self.version,
            "record_state": self.record_state,
            "replaced_by": self.replaced_by,
            "replaced_by_sha256": self.replaced_by_sha256,
            "signed": self.signed,
        }

    def summary(self) -> dict[str, Any]:
        """The `registered` member of a verification report (DESIGN.md's shape)."""
        return {
            "state": self.state,
            "school_id": self.school_id,
            "record_id": self.record_id,
            "replaced_by": self.replaced_by,
            "replaced_by_sha256": self.replaced_by_sha256,
        }


async def registered(db: Database, sha256: str) -> Registered:
    """The registry's word on the file whose sha256 is `sha256` (lower-case hex)."""
    if not SHA256.fullmatch(sha256):
        return Registered(sha256, "unknown")
    async with db.connection() as conn, conn.transaction(readonly=True):
        row = await conn.fetchrow(_VERSION, sha256)
        if row is None:
            return Registered(sha256, "unknown")
        signed = await conn.fetch(_SIGNED, row["school_id"], row["record_id"])
    return Registered(
        sha256,
        _state(row["current"], row["signatures"], row["replaced_by"]),
        school_id=row["school_id"],
        school_name=row["school_name"],
        record_id=row["record_id"],
        version=row["version"],
        record_state=row["state"],
        replaced_by=row["replaced_by"],
        replaced_by_sha256=row["replaced_by_sha256"],
        signed=_in_order(signed),
    )


def _state(current: bool, signatures: int, replaced_by: str | None) -> str:
    if replaced_by is not None or not current:
        return "superseded"
    return "issued" if signatures == len(ORDER) else "in_progress"


def _in_order(rows: list[Any]) -> list[dict[str, str]]:
    at: dict[str, datetime] = {r["stage"]: r["signed_at"] for r in rows}
    return [{"stage": s.value, "signed_at": at[s].isoformat()} for s in ORDER if s in at]


@dataclass(frozen=True)
class CertificateKey:
    """A signature's certificate as the registry can be asked about it.

    `sha256` (of the DER) names the exact certificate, so its issuer and serial both; the
    hex `serial` alone is unique only per issuing CA and is asked only of what the
    registry knows by serial (daemon.verification.verdict.Registry).
    """

    sha256: str
    serial: str


def wanted(verdicts: list[RecordVerdict]) -> tuple[list[CertificateKey], list[str]]:
    """The certificates and the schools to ask the registry about, for these verdicts."""
    keys: dict[str, CertificateKey] = {}
    schools: set[str] = set()
    for verdict in verdicts:
        for school in (verdict.claimed_school_id, verdict.school_id):
            if school:
                schools.add(school)
        for judged in verdict.signatures:
            who = judged.identity
            if who is not None:
                keys[who.cert_sha256] = CertificateKey(who.cert_sha256, who.cert_serial)
                if who.school_id:
                    schools.add(who.school_id)
    return list(keys.values()), sorted(schools)


# The current certificate of each signer: by fingerprint; a row without one, by serial.
_CURRENT = """
SELECT school_id, signer_id, stage, active, created_at, deactivated_at, cert_not_after,
       cert_serial, cert_sha256
FROM signers
WHERE cert_sha256 = ANY($1::text[]) OR (cert_sha256 IS NULL AND cert_serial = ANY($2::text[]))
"""

# A certificate this deployment signed with, since replaced (renewed) in `signers`.
_SIGNED_WITH = """
SELECT DISTINCT ON (g.cert_serial)
       s.school_id, s.signer_id, s.stage, s.active, s.created_at, s.deactivated_at,
       s.cert_not_after, g.cert_serial, NULL::text AS cert_sha256
FROM signatures g JOIN signers s USING (school_id, signer_id)
WHERE g.cert_serial = ANY($1::text[])
ORDER BY g.cert_serial, g.signed_at DESC
"""

_SCHOOLS = "SELECT school_id FROM schools WHERE school_id = ANY($1::text[])"


async def signers(db: Database, certificates: list[CertificateKey], schools: list[str]) -> Registry:
    """Who the registry has each of `certificates` as, and which of `schools` it holds.

    A certificate matched by its fingerprint is that signer's current one; one known by
    serial only (a row registered before fingerprints were kept, or one this deployment
    signed with before the signer's certificate was renewed) is kept apart, for the
    verdict to use only where no fingerprint matched.
    """
    fingerprints = [c.sha256 for c in certificates]
    serials = [c.serial for c in certificates]
    try:
        async with db.connection() as conn, conn.transaction(readonly=True):
            current = await conn.fetch(_CURRENT, fingerprints, serials)
            past = await conn.fetch(_SIGNED_WITH, serials)
            held = await conn.fetch(_SCHOOLS, schools)
    except asyncpg.InsufficientPrivilegeError as exc:
        # A database migrated before hocba_verifier could read signers: judged as if down.
        raise DatabaseUnavailable(
            "The verifier role may not read signers; run `hocba-signer migrate`."
        ) from exc
    by_certificate = {r["cert_sha256"]: _signer(r) for r in current if r["cert_sha256"]}
    by_serial = {r["cert_serial"]: _signer(r) for r in past}
    by_serial |= {r["cert_serial"]: _signer(r) for r in current if not r["cert_sha256"]}
    return Registry(by_certificate, by_serial, frozenset(r["school_id"] for r in held))


def _signer(row: Any) -> RegisteredSigner:
    return RegisteredSigner(
        school_id=row["school_id"],
        signer_id=row["signer_id"],
        stage=Stage(row["stage"]),
        active=row["active"],
        registered_at=row["created_at"],
        deactivated_at=row["deactivated_at"],
        cert_not_after=row["cert_not_after"],
    )
