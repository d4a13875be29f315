"""Packages end to end: sealed containers, the simulator, faults, crashes, follow-ups."""

from __future__ import annotations

import asyncio
import subprocess
import zipfile
from pathlib import Path

from prometheus_client import REGISTRY

from daemon.app import Running
from daemon.packaging import check, container, packages
from daemon.packaging.packages import PackageState
from daemon.pdf import validation
from daemon.settings import Settings
from tests.integration.conftest import SchoolSystem
from tests.integration.package_fixtures import *  # noqa: F403
from tests.integration.package_fixtures import (
    Ministry,
    Packaging,
    fresh_year,
    issue,
    states_of,
    told_each_state_once,
)
from tests.services import StatusEvents

SCHOOL = "31000102"


async def test_a_package_is_accepted_and_every_record_told(
    daemon: Running,
    school_system: SchoolSystem,
    status: StatusEvents,
    ministry,
    packaging,
) -> None:
    # Given three issued records of a round, and a ministry that works
    year = fresh_year()
    infos = await issue(school_system, status, SCHOOL, year, 3)
    sim: Ministry = await ministry()
    pkg: Packaging = packaging(sim)

    # When the round is packaged and submitted
    built = await pkg.runner.package(SCHOOL, year, 1, submit=False)
    assert built is not None and built.state is PackageState.BUILT
    final = await pkg.submitter.follow(built)

    # Then the ministry accepted it, once, with every record
    assert final.state is PackageState.ACCEPTED
    assert list(sim.sim.by_key) == [str(built.package_id)]
    assert built.path is None and pkg.file(built).is_file()  # a blob, not a file of its own
    # And every record was told packaged, submitted, accepted, in that order
    ids = {i.record_id for i in infos}
    await told_each_state_once(status, ids)
    async with daemon.db.connection() as conn:
        states = await conn.fetch(
            "SELECT state FROM records WHERE school_id = $1 AND academic_year = $2", SCHOOL, year
        )
        attempts = await conn.fetch(
            "SELECT kind, outcome, receipt_id FROM submission_attempts WHERE package_id = $1",
            built.package_id,
        )
    assert {r["state"] for r in states} == {"accepted_by_ministry"}
    assert attempts[0]["kind"] == "submit" and attempts[0]["outcome"] == "received"
    assert attempts[-1]["outcome"] == "accepted"


async def test_openssl_accepts_the_seal_and_every_digest_matches(
    school_system: SchoolSystem,
    status: StatusEvents,
    ministry,
    packaging,
    settings: Settings,
    tmp_path: Path,
) -> None:
    year = fresh_year()
    await issue(school_system, status, SCHOOL, year, 2)
    pkg: Packaging = packaging(await ministry())
    built = await pkg.runner.package(SCHOOL, year, 1, submit=False)
    assert built is not None

    with zipfile.ZipFile(pkg.file(built)) as archive:
        archive.extract(container.MANIFEST, tmp_path)
        archive.extract(container.SIGNATURE, tmp_path)
    done = await asyncio.to_thread(
        subprocess.run,
        [
            "openssl", "cms", "-verify", "-binary", "-inform", "DER",
            "-in", str(tmp_path / container.SIGNATURE),
            "-content", str(tmp_path / container.MANIFEST),
            "-CAfile", str(settings.signing.trust_roots[0]),
            "-out", "/dev/null",
        ],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Verification successful" in done.stderr
    roots = validation.load_certificates(settings.signing.trust_roots)
    report = await asyncio.to_thread(check.check_package, pkg.file(built), roots)
    assert report.valid, report.problems
    assert report.pdfs_checked == 2
    assert report.cades is not None and report.cades.trusted


async def test_every_package_is_accepted_exactly_once_despite_a_flaky_ministry(
    daemon: Running,
    school_system: SchoolSystem,
    status: StatusEvents,
    ministry,
    packaging,
) -> None:
    # Given three schools' rounds, and a ministry failing 30%, throttling and dropping lines
    year = fresh_year()
    schools = ["31000101", "31000102", "31000103"]
    issued = await asyncio.gather(*(issue(school_system, status, s, year, 2) for s in schools))
    sim: Ministry = await ministry(error_rate=0.3, throttle_rate=0.2, drop_rate=0.2, fail_first=2)
    pkg: Packaging = packaging(sim)

    # When every round is packaged and followed concurrently
    for school in schools:
        await pkg.runner.package(school, year, 1, submit=True)
    finals = await pkg.runner.settled()

    # Then each package was received once and accepted, whatever was retried
    assert [p.state for p in finals] == [PackageState.ACCEPTED] * 3
    assert len(sim.sim.by_key) == 3
    assert sim.sim.faults_injected >= 2  # the faults did bite
    ids = {i.record_id for infos in issued for i in infos}
    await told_each_state_once(status, ids)
    async with daemon.db.connection() as conn:
        retried = await conn.fetchval(
            "SELECT count(*) FROM submission_attempts WHERE outcome = 'retry' "
            "AND package_id = ANY($1::uuid[])",
            [p.package_id for p in finals],
        )
    assert retried > 0


async def test_a_tampered_pdf_is_rejected_with_a_precise_error_then_repackaged(
    daemon: Running,
    school_system: SchoolSystem,
    status: StatusEvents,
    ministry,
    packaging,
    tmp_path: Path,
) -> None:
    # Given a built package whose container is replaced: one PDF's bytes changed
    year = fresh_year()
    infos = await issue(school_system, status, SCHOOL, year, 2)
    sim: Ministry = await ministry()
    pkg: Packaging = packaging(sim)
    built = await pkg.runner.package(SCHOOL, year, 1, submit=False)
    assert built is not None
    victim = sorted(i.record_id for i in infos)[0]
    tampered = pkg.copy(built, tmp_path)
    await asyncio.to_thread(_replace_entry, tampered, f"records/{victim}.pdf", _flip)
    built = await pkg.swap_container(built, tampered)

    # When it is submitted
    final = await pkg.submitter.follow(built)

    # Then the ministry rejects it, naming the entry and the digests
    assert final.state is PackageState.REJECTED
    report = next(iter(sim.sim.by_key.values())).report
    assert report is not None
    codes = {(p.code, p.message.split(":")[0]) for p in report.problems}
    assert ("digest_mismatch", f"records/{victim}.pdf") in codes
    # And every record is told rejected_by_ministry with that reason
    ids = {i.record_id for i in infos}
    events = await status.wait_until(
        lambda evs: all("rejected_by_ministry" in s for s in states_of(evs, ids).values())
    )
    rejected = [e for e in events if e["record_id"] in ids and e["state"] == "rejected_by_ministry"]
    assert {e["reason"]["code"] for e in rejected} == {"ministry_rejected"}
    assert all(f"records/{victim}.pdf" in e["reason"]["message"] for e in rejected)
    # And the records can go into a follow-up package, which the ministry accepts
    again = await pkg.runner.package(SCHOOL, year, 1, submit=False)
    assert again is not None and again.sequence == 2 and again.record_count == 2
    assert (await pkg.submitter.follow(again)).state is PackageState.ACCEPTED


async def test_a_tampered_manifest_breaks_the_seal(
    school_system: SchoolSystem,
    status: StatusEvents,
    ministry,
    packaging,
    settings: Settings,
    tmp_path: Path,
) -> None:
    year = fresh_year()
    await issue(school_system, status, SCHOOL, year, 1)
    pkg: Packaging = packaging(await ministry())
    built = await pkg.runner.package(SCHOOL, year, 1, submit=False)
    assert built is not None
    tampered = pkg.copy(built, tmp_path)

    def add_space(data: bytes) -> bytes:
        return data.replace(b"</asic:ASiCManifest>", b"</asic:ASiCManifest> ")

    await asyncio.to_thread(_replace_entry, tampered, container.MANIFEST, add_space)
    roots = validation.load_certificates(settings.signing.trust_roots)
    report = await asyncio.to_thread(check.check_package, tampered, roots)
    assert [p.code for p in report.problems] == ["signature_invalid"]
    assert "the manifest was changed" in report.problems[0].message


async def test_a_crash_mid_submission_is_resumed_without_a_duplicate(
    daemon: Running,
    school_system: SchoolSystem,
    status: StatusEvents,
    ministry,
    packaging,
) -> None:
    # Given a package whose POST reached the ministry, but whose answer was lost
    year = fresh_year()
    infos = await issue(school_system, status, SCHOOL, year, 2)
    sim: Ministry = await ministry(drop_rate=1.0)
    first: Packaging = packaging(sim)
    built = await first.runner.package(SCHOOL, year, 1, submit=True)
    assert built is not None
    await sim.sim.wait_until(lambda: str(built.package_id) in sim.sim.by_key)
    # When the daemon dies there (its follower cancelled), and a new one starts
    await first.runner.close()
    sim.sim.faults = type(sim.sim.faults)()
    async with daemon.db.connection() as conn:
        row = await conn.fetchrow(
            "SELECT state, receipt_id FROM packages WHERE package_id = $1", built.package_id
        )
    assert row["state"] == "submitting" and row["receipt_id"] is None
    second: Packaging = packaging(sim)
    assert await second.runner.resume() >= 1
    finals = await second.runner.settled()

    # Then the package is accepted under the one receipt the ministry gave
    final = next(p for p in finals if p.package_id == built.package_id)
    assert final.state is PackageState.ACCEPTED
    # (the resumed daemon also finished other tests' unfinished packages: ignore those)
    receipts = [r for r in sim.sim.by_receipt.values() if r.key == str(built.package_id)]
    assert [r.receipt_id for r in receipts] == [final.receipt_id]
    stored = [p for p in sim.sim.store_dir.glob("*.asice") if p.stem == final.receipt_id]
    assert len(stored) == 1
    ids = {i.record_id for i in infos}
    await told_each_state_once(status, ids)


async def test_a_receipt_the_ministry_lost_is_resent_under_the_same_key(
    daemon: Running,
    school_system: SchoolSystem,
    status: StatusEvents,
    ministry,
    packaging,
) -> None:
    # Given a ministry that loses the first receipt it is asked about (404)
    year = fresh_year()
    infos = await issue(school_system, status, SCHOOL, year, 2)
    sim: Ministry = await ministry(forget_receipts=1)
    pkg: Packaging = packaging(sim)
    built = await pkg.runner.package(SCHOOL, year, 1, submit=False)
    assert built is not None

    # When the package is followed
    final = await pkg.submitter.follow(built)

    # Then it went back to submitting, was resent under its key, and was accepted once
    assert final.state is PackageState.ACCEPTED
    async with daemon.db.connection() as conn:
        attempts = await conn.fetch(
            "SELECT kind, outcome, http_status, receipt_id FROM submission_attempts "
            "WHERE package_id = $1 ORDER BY id",
            built.package_id,
        )
    lost = [a for a in attempts if a["outcome"] == "lost"]
    assert len(lost) == 1 and lost[0]["http_status"] == 404
    submits = [a for a in attempts if a["kind"] == "submit"]
    assert [a["outcome"] for a in submits] == ["received", "received"]
    assert submits[0]["receipt_id"] != final.receipt_id == submits[1]["receipt_id"]
    assert lost[0]["receipt_id"] == submits[0]["receipt_id"]
    assert [r.receipt_id for r in sim.sim.by_key.values()] == [final.receipt_id]
    assert [p.stem for p in sim.sim.store_dir.glob("*.asice")] == [final.receipt_id]
    # And the records were told each state once
    ids = {i.record_id for i in infos}
    await told_each_state_once(status, ids)


async def test_a_receipt_lost_again_and_again_stops_the_package_for_attention(
    daemon: Running,
    school_system: SchoolSystem,
    status: StatusEvents,
    ministry,
    packaging,
) -> None:
    # Given a ministry that loses every receipt, and two resends allowed
    year = fresh_year()
    await issue(school_system, status, SCHOOL, year, 1)
    sim: Ministry = await ministry(forget_receipts=1000)
    pkg: Packaging = packaging(sim, max_receipt_resends=2)
    built = await pkg.runner.package(SCHOOL, year, 1, submit=False)
    assert built is not None
    gave_up = REGISTRY.get_sample_value(
        "hocba_packages_finished_total", {"school": SCHOOL, "outcome": "attention"}
    )

    # When the package is followed
    final = await pkg.submitter.follow(built)

    # Then it stops in attention after three losses (two resends), counted
    assert final.state is PackageState.ATTENTION
    async with daemon.db.connection() as conn:
        counts = await conn.fetch(
            "SELECT kind, outcome, count(*) AS n FROM submission_attempts "
            "WHERE package_id = $1 GROUP BY 1, 2",
            built.package_id,
        )
        records = await conn.fetch(
            "SELECT r.state, p.active FROM package_records p JOIN records r "
            "USING (school_id, record_id) WHERE p.package_id = $1",
            built.package_id,
        )
        unfinished = await packages.unfinished(conn)
    assert {(c["kind"], c["outcome"]): c["n"] for c in counts} == {
        ("submit", "received"): 3,
        ("poll", "lost"): 3,
    }
    assert (
        REGISTRY.get_sample_value(
            "hocba_packages_finished_total", {"school": SCHOOL, "outcome": "attention"}
        )
        == (gave_up or 0) + 1
    )
    # And its records stay in it (the ministry may have it), and it is not resumed
    assert [(r["state"], r["active"]) for r in records] == [("submitted", True)]
    assert built.package_id not in {p.package_id for p in unfinished}
    assert (await pkg.submitter.follow(final)).state is PackageState.ATTENTION


async def test_records_issued_after_submission_go_into_a_follow_up_package(
    daemon: Running,
    school_system: SchoolSystem,
    status: StatusEvents,
    ministry,
    packaging,
) -> None:
    # Given a round submitted while the ministry is still checking it
    year = fresh_year()
    early = await issue(school_system, status, SCHOOL, year, 2)
    sim: Ministry = await ministry(accept_delay_s=3600)
    pkg: Packaging = packaging(sim)
    first = await pkg.runner.package(SCHOOL, year, 1, submit=True)
    assert first is not None
    await sim.sim.wait_until(lambda: str(first.package_id) in sim.sim.by_key)

    # When more records of that round are issued and the round is packaged again
    late = await issue(school_system, status, SCHOOL, year, 1)
    second = await pkg.runner.package(SCHOOL, year, 1, submit=False)

    # Then they go into a follow-up package, and only they
    assert second is not None and second.sequence == 2
    assert second.file_name == f"{year}-round1-2.asice"
    with zipfile.ZipFile(pkg.file(second)) as archive:
        pdfs = sorted(n for n in archive.namelist() if n.startswith("records/"))
    assert pdfs == [f"records/{late[0].record_id}.pdf"]
    assert await pkg.runner.package(SCHOOL, year, 1, submit=False) == second
    async with daemon.db.connection() as conn:
        twice = await conn.fetchval(
            "SELECT count(*) FROM (SELECT record_id FROM package_records WHERE active "
            "GROUP BY school_id, record_id HAVING count(*) > 1) t"
        )
    assert twice == 0
    assert len(early) == 2


async def test_a_package_request_on_amqp_builds_the_package(
    daemon: Running, school_system: SchoolSystem, status: StatusEvents
) -> None:
    import json
    import uuid

    year = fresh_year()
    infos = await issue(school_system, status, SCHOOL, year, 1)
    body = {
        "type": "hocba.package_request.v1",
        "request_id": str(uuid.uuid4()),
        "school_id": SCHOOL,
        "academic_year": year,
        "submission_round": 1,
        "submit": False,
        "requested_at": "2026-06-23T08:00:00+07:00",
    }
    await school_system.publish(f"package.{SCHOOL}", json.dumps(body).encode(), body["request_id"])
    ids = {infos[0].record_id}
    events = await status.wait_until(lambda evs: states_of(evs, ids)[infos[0].record_id] != [])
    assert states_of(events, ids)[infos[0].record_id] == ["packaged"]


def _flip(data: bytes) -> bytes:
    # Same length, one byte changed inside the PDF: what a careless edit would do.
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]


def _replace_entry(path: Path, name: str, change) -> None:
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, change(data) if info.filename == name else data)
    tmp.replace(path)
