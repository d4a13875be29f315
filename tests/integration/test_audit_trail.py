"""The audit trail you can prove: tampered as a superuser would, `audit verify` says where.

Each tampering test gets a database of its own (migrated as the admin, written through
the real store statement and trigger, documents in a real file store), is tampered
with as a superuser would (triggers off with session_replication_role), and verified.
Anchors are timestamped by the dev TSA over HTTP and checked against the dev root.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from datetime import UTC, datetime

import asyncpg
import pytest

from daemon.app import Running
from daemon.audit import chain, verify
from daemon.blobs import FsStore
from daemon.dev import env as devenv
from tests.integration.audit_kit import *  # noqa: F403
from tests.integration.audit_kit import OTHER, SCHOOL, Trail, codes
from tests.integration.conftest import SchoolSystem
from tests.pki_services_fixtures import *  # noqa: F403
from tests.services import StatusEvents


async def test_an_untouched_trail_verifies_with_its_anchor(trail: Trail) -> None:
    # Given two schools' records, issued, anchored, and more signed after the anchor
    await trail.issue(SCHOOL, "R-1")
    await trail.issue(OTHER, "R-1")
    await trail.anchor()
    await trail.issue(SCHOOL, "R-2")
    # When the trail is verified
    report = await trail.verify()
    # Then it is whole: both chains, every entry, the anchor, every stored version
    assert report.ok, report.breaks
    assert (report.chains, report.entries, report.anchors, report.documents) == (2, 9, 1, 12)
    # And each entry links to the one before, as the verifier recomputed independently
    rows = await trail.conn.fetch(
        "SELECT prev_hash, hash FROM audit_log WHERE chain = $1 ORDER BY seq", SCHOOL
    )
    assert rows[0]["prev_hash"] == chain.GENESIS
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(rows))


async def test_an_updated_entry_is_named(trail: Trail) -> None:
    await trail.issue(SCHOOL, "R-1")
    # When a superuser changes who signed, in the audit entry of the principal's stage
    await trail.as_superuser(
        "UPDATE audit_log SET detail = jsonb_set(detail, '{signer_id}', '\"someone-else\"') "
        "WHERE chain = $1 AND seq = 2",
        SCHOOL,
    )
    report = await trail.verify()
    assert codes(report)[0] == ("entry_altered", SCHOOL, 2)
    assert not report.ok


async def test_a_deleted_entry_is_named(trail: Trail) -> None:
    await trail.issue(SCHOOL, "R-1")
    await trail.as_superuser("DELETE FROM audit_log WHERE chain = $1 AND seq = 2", SCHOOL)
    report = await trail.verify(SCHOOL)
    assert ("entry_missing", SCHOOL, 2) in codes(report)
    # And the signature whose entry was removed has no audit entry any more
    assert "signature_unaudited" in {b.code for b in report.breaks}


async def test_a_deleted_newest_entry_is_named_by_the_head(trail: Trail) -> None:
    await trail.issue(SCHOOL, "R-1")
    await trail.as_superuser("DELETE FROM audit_log WHERE chain = $1 AND seq = 3", SCHOOL)
    report = await trail.verify(SCHOOL)
    assert ("entry_missing", SCHOOL, 3) in codes(report)


async def test_reordered_entries_are_named(trail: Trail) -> None:
    await trail.issue(SCHOOL, "R-1")
    # When a superuser swaps the places of entries 1 and 2
    await trail.as_superuser(
        f"UPDATE audit_log SET seq = -1 WHERE chain = '{SCHOOL}' AND seq = 1;"
        f"UPDATE audit_log SET seq = 1 WHERE chain = '{SCHOOL}' AND seq = 2;"
        f"UPDATE audit_log SET seq = 2 WHERE chain = '{SCHOOL}' AND seq = -1;"
    )
    report = await trail.verify(SCHOOL)
    assert codes(report)[0] == ("link_broken", SCHOOL, 1)


async def test_a_chain_rewritten_after_its_anchor_is_caught_by_the_anchor(trail: Trail) -> None:
    # Given an anchored chain
    await trail.issue(SCHOOL, "R-1")
    await trail.anchor()
    # When a superuser rewrites the whole chain consistently, every hash recomputed as
    # the trigger would, with a signer changed in the first entry
    await trail.as_superuser(
        "UPDATE audit_log SET detail = jsonb_set(detail, '{cert_serial}', '\"ffff\"') "
        "WHERE chain = $1 AND seq = 1",
        SCHOOL,
    )
    await trail.as_superuser(
        "UPDATE signatures SET cert_serial = 'ffff' WHERE school_id = $1 "
        "AND stage = 'homeroom_teacher'",
        SCHOOL,
    )
    rows = await trail.conn.fetch(
        "SELECT id, chain, seq, prev_hash, hash, at, school_id, "
        "record_id, request_id, action, detail::text AS detail "
        "FROM audit_log WHERE chain = $1 ORDER BY seq",
        SCHOOL,
    )
    prev = chain.GENESIS
    for row in rows:
        entry = chain.Entry(**dict(row))
        new_hash = chain.entry_hash(entry, prev_hash=prev)
        await trail.as_superuser(
            "UPDATE audit_log SET prev_hash = $2, hash = $3 WHERE id = $1", entry.id, prev, new_hash
        )
        prev = new_hash
    await trail.as_superuser("UPDATE audit_heads SET hash = $2 WHERE chain = $1", SCHOOL, prev)
    report = await trail.verify()
    # Then the chain itself is consistent, but the anchor's timestamped head is not in it
    assert codes(report) == [("anchor_mismatch", SCHOOL, 3)]
    assert "was rewritten" in report.breaks[0].message


async def test_a_forged_anchor_is_refused(trail: Trail) -> None:
    await trail.issue(SCHOOL, "R-1")
    await trail.anchor()
    # When a superuser makes the anchor name other heads than its token signs
    await trail.as_superuser(
        "UPDATE audit_anchors SET heads = jsonb_set(heads, '{0,hash}', to_jsonb(repeat('1', 64)))"
    )
    report = await trail.verify()
    assert report.breaks[0].code == "anchor_invalid"
    assert "imprint" in report.breaks[0].message


async def test_a_swapped_document_is_named(trail: Trail) -> None:
    digests = await trail.issue(SCHOOL, "R-1")
    # When a superuser of the file store puts other bytes under the issued version's name
    trail.store.path(digests[-1]).write_bytes(b"%PDF-1.7 another record")
    report = await trail.verify()
    assert [(b.code, b.chain) for b in report.breaks] == [("document_altered", SCHOOL)]
    assert "version 3" in report.breaks[0].message


async def test_a_version_swapped_in_the_database_is_named(trail: Trail) -> None:
    await trail.issue(SCHOOL, "R-1")
    other = await trail.store.put(b"%PDF-1.7 another record")
    await trail.as_superuser(
        "UPDATE record_versions SET sha256 = $2 WHERE school_id = $1 AND version = 3", SCHOOL, other
    )
    report = await trail.verify()
    codes = {b.code for b in report.breaks}
    assert {"version_missing", "version_unaudited"} <= codes


async def test_the_daemons_role_cannot_rewrite_history(
    daemon: Running, school_system: SchoolSystem, status: StatusEvents, dev_env: devenv.DevEnv
) -> None:
    # Given a record the daemon signed, connected as its own login role in hocba_daemon
    _, _, sent = await school_system.first_stage("31000101")
    event = (await status.wait(sent.request_id))[0]
    assert event["state"] == "signed_by_teacher", event["reason"]
    async with daemon.db.connection() as conn:
        assert await conn.fetchval("SELECT pg_has_role(current_user, 'hocba_daemon', 'MEMBER')")
        # When it tries to change or remove history, or the schema, it is refused
        for sql in (
            "UPDATE audit_log SET action = 'x'",
            "DELETE FROM audit_log",
            "UPDATE signatures SET signer_id = 'x'",
            "DELETE FROM signatures",
            "UPDATE record_versions SET sha256 = 'x'",
            "DELETE FROM requests",
            "UPDATE audit_heads SET hash = 'x'",
            "DELETE FROM audit_anchors",
            "UPDATE audit_verifications SET ok = true",
            "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update",
            "CREATE TABLE mine (id int)",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)
        # but it records its scheduled walks (daemon/audit/anchors.py)
        walk = """INSERT INTO audit_verifications (started_at, database_started_at, ok, chains,
                      entries, breaks, documents, instance)
                  VALUES (now(), now(), true, 0, 0, 0, 0, 'test')"""
        await conn.execute(walk)
        # And the trail it wrote is whole
        roots = dev_env.settings.signing.trust_roots
        from daemon.pdf.validation import load_certificates

        report = await verify.verify(
            conn,
            FsStore(dev_env.settings.store.path),
            load_certificates(roots),
            school_id="31000101",
        )
    assert report.ok, report.breaks


def test_the_canonical_form_is_length_prefixed() -> None:
    entry = chain.Entry(
        1,
        "s",
        1,
        chain.GENESIS,
        "",
        datetime(2026, 1, 2, tzinfo=UTC),
        "s",
        None,
        None,
        "a:b\n",
        json.dumps({"k": "v"}),
    )
    shifted = chain.Entry(
        1,
        "s",
        1,
        chain.GENESIS,
        "",
        datetime(2026, 1, 2, tzinfo=UTC),
        "s",
        None,
        None,
        "a",
        ":b\n" + json.dumps({"k": "v"}),
    )
    assert chain.entry_hash(entry) != chain.entry_hash(shifted)
    assert hashlib.sha256(b"x").hexdigest() != chain.entry_hash(entry)
