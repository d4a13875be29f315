"""The proofs at the end of a chaos run, from the database, the stored PDFs, the status
streams and the dead-letter queue. Each check returns (holds, counts text)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg

from daemon.blobs import FsStore
from daemon.pdf import validation
from daemon.stages import FIELD_NAMES
from tests.chaos.driver import Driver, MqttRecorder
from tests.chaos.ministry import MinistrySimulator

PACKAGE_STATES = ("packaged", "submitted", "accepted_by_ministry")


@dataclass
class Check:
    name: str
    holds: bool
    detail: str

    def line(self) -> str:
        return f"{self.name}: {self.detail} — {'holds' if self.holds else 'VIOLATED'}"


async def dead_letters(
    amqp_url: str, queue_name: str = "hocba.sign.dead"
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    taken = []
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        queue = await channel.get_queue(queue_name)
        while (message := await queue.get(fail=False)) is not None:
            await message.ack()
            taken.append(message)
    return taken


def _validate(path: str, roots: list[Path]) -> tuple[int, list[str], bool]:
    reports = validation.validate_pdf(Path(path).read_bytes(), validation.load_certificates(roots))
    fields = [r.field_name for r in reports]
    return len(reports), fields, all(r.bottom_line for r in reports)


async def verify(
    dsn: str,
    amqp_url: str,
    store_path: Path,
    roots: list[Path],
    driver: Driver,
    mqtt: MqttRecorder,
    ministry: MinistrySimulator,
) -> list[Check]:
    conn = await asyncpg.connect(dsn)
    try:
        checks = await _verify(conn, amqp_url, store_path, roots, driver, mqtt)
        checks += await _verify_packages(conn, amqp_url, driver, mqtt, ministry)
        return checks
    finally:
        await conn.close()


async def _verify(
    conn: asyncpg.Connection,
    amqp_url: str,
    store_path: Path,
    roots: list[Path],
    driver: Driver,
    mqtt: MqttRecorder,
) -> list[Check]:
    checks: list[Check] = []
    good_ids = {rid for t in driver.records.values() for rid in t.requests}
    bad_ids = set(driver.bad)

    # 1. Every request has exactly one outcome (one request row, one distinct event).
    rows = await conn.fetch("SELECT request_id::text AS rid, state, reason_code FROM requests")
    stored = {r["rid"]: r for r in rows}
    outcomes = await conn.fetch(
        """SELECT payload->>'request_id' AS rid, count(DISTINCT event_id) AS n
           FROM outbox WHERE payload->>'request_id' IS NOT NULL GROUP BY 1"""
    )
    distinct = {r["rid"]: r["n"] for r in outcomes}
    missing = [rid for rid in good_ids if rid not in stored]
    several = [rid for rid, n in distinct.items() if n > 1]
    no_event = [rid for rid in good_ids | bad_ids if distinct.get(rid, 0) == 0]
    checks.append(
        Check(
            "every request has exactly one outcome",
            not missing and not several and not no_event,
            f"{len(good_ids)} requests + {len(bad_ids)} bad inputs; without a stored outcome "
            f"{len(missing)}, without a status event {len(no_event)}, with several {len(several)}",
        )
    )

    # 2. Every legitimate record was issued (nothing lost, nothing refused by a fault).
    finals = driver.finals()
    checks.append(
        Check(
            "every record issued",
            finals.get("issued", 0) == len(driver.records),
            f"{finals.get('issued', 0)}/{len(driver.records)} issued; others {dict(finals)}",
        )
    )

    # 3. No stage signed twice: one signature row per stage, as many as the record says.
    twice = await conn.fetchval(
        """SELECT count(*) FROM (SELECT r.record_id FROM records r
           JOIN signatures s USING (school_id, record_id)
           GROUP BY r.school_id, r.record_id, r.signatures
           HAVING count(*) <> r.signatures OR count(DISTINCT s.stage) <> count(*)) x"""
    )
    sig_rows = await conn.fetchval("SELECT count(*) FROM signatures")
    checks.append(
        Check(
            "no stage signed twice (database)",
            twice == 0,
            f"{sig_rows} signatures; records with a stage twice or a count mismatch: {twice}",
        )
    )

    # 4. Every issued PDF: exactly three valid signatures, in the legal order.
    # Issued: all three signatures (the state moves on to packaged, submitted, accepted).
    issued = await conn.fetch(
        "SELECT current_sha256 FROM records WHERE signatures = $1", len(FIELD_NAMES)
    )
    store = FsStore(store_path)
    paths = [str(store.path(r["current_sha256"])) for r in issued]
    results = await asyncio.to_thread(_validate_all, paths, roots)
    bad_pdfs = [
        p
        for p, (n, fields, ok) in zip(paths, results, strict=True)
        if n != 3 or tuple(fields) != FIELD_NAMES or not ok
    ]
    checks.append(
        Check(
            "every issued PDF has exactly three valid signatures in order",
            not bad_pdfs and len(issued) == finals.get("issued", 0),
            f"{len(issued) - len(bad_pdfs)}/{len(issued)} PDFs valid (GVCN, HieuTruong, DauTruong)",
        )
    )

    # 5. No status event missing on AMQP or MQTT, compared with the outbox.
    outbox = await conn.fetch(
        "SELECT DISTINCT event_id::text AS id, amqp_published_at IS NULL AS a, "
        "mqtt_published_at IS NULL AS m FROM outbox"
    )
    ids = {r["id"] for r in outbox}
    unpublished = sum(1 for r in outbox if r["a"] or r["m"])
    lost_amqp = ids - set(driver.amqp_events)
    lost_mqtt = ids - set(mqtt.events)
    checks.append(
        Check(
            "no status event missing on AMQP",
            not lost_amqp and not unpublished,
            f"{len(ids)} events in the outbox, {len(ids) - len(lost_amqp)} received on AMQP "
            f"({driver.amqp_deliveries} deliveries), {unpublished} rows unpublished",
        )
    )
    checks.append(
        Check(
            "no status event missing on MQTT",
            not lost_mqtt,
            f"{len(ids)} events in the outbox, {len(ids) - len(lost_mqtt)} received on MQTT "
            f"({mqtt.reconnects} recorder reconnects)",
        )
    )

    # 6. The dead-letter queue holds the deliberately bad inputs, and only them.
    letters = await dead_letters(amqp_url)
    dead_ids = Counter(m.message_id for m in letters)
    strays = {rid for rid in dead_ids if rid not in bad_ids}
    absent = bad_ids - set(dead_ids)
    reasons = Counter(
        str((m.headers or {}).get("x-hocba-reason-code")) for m in letters if m.message_id in strays
    )
    refused_right = sum(1 for b in driver.bad.values() if b.outcome is not None)
    checks.append(
        Check(
            "dead-letter queue holds only the deliberately bad inputs",
            not strays and not absent,
            f"{len(letters)} letters for {len(bad_ids)} bad inputs ({refused_right} refused); "
            f"strays {len(strays)} {dict(reasons)}, bad inputs not dead-lettered {len(absent)}",
        )
    )

    # 7. Each school only its own keys: every signature's certificate is its signer's.
    foreign = await conn.fetchval(
        """SELECT count(*) FROM signatures s JOIN signers g USING (school_id, signer_id)
           WHERE g.cert_serial <> s.cert_serial
              OR NOT starts_with(g.key_label, s.school_id || '/')"""
    )
    checks.append(
        Check(
            "every signature made with its own school's key",
            foreign == 0,
            f"{sig_rows} signatures, {foreign} with a key or certificate not their school's",
        )
    )
    return checks


async def _verify_packages(
    conn: asyncpg.Connection,
    amqp_url: str,
    driver: Driver,
    mqtt: MqttRecorder,
    ministry: MinistrySimulator,
) -> list[Check]:
    checks: list[Check] = []
    issued = {
        (r[0], r[1])
        for r in await conn.fetch(
            "SELECT school_id, record_id FROM records WHERE signatures = $1", len(FIELD_NAMES)
        )
    }
    packages = {
        str(r["package_id"]): r
        for r in await conn.fetch(
            """SELECT package_id, school_id, state, receipt_id, record_count, accepted_records,
                      sequence FROM packages"""
        )
    }
    accepted = {pid for pid, r in packages.items() if r["state"] == "accepted"}
    states = Counter(r["state"] for r in packages.values())

    # 8. From the database: every package accepted, with one receipt; every issued record
    # in exactly one accepted package.
    attempts = await conn.fetch(
        """SELECT package_id::text AS pid, kind, outcome, receipt_id FROM submission_attempts"""
    )
    received = Counter(
        a["pid"] for a in attempts if a["kind"] == "submit" and a["outcome"] == "received"
    )
    receipts: dict[str, set[str]] = {}
    for a in attempts:
        if a["receipt_id"] is not None:
            receipts.setdefault(a["pid"], set()).add(a["receipt_id"])
    not_once = [pid for pid in packages if received[pid] != 1]
    mixed = [
        pid
        for pid, r in packages.items()
        if receipts.get(pid, set()) != ({r["receipt_id"]} if r["receipt_id"] else set())
    ]
    short = [
        pid
        for pid in accepted
        if packages[pid]["accepted_records"] != packages[pid]["record_count"]
    ]
    in_accepted = Counter(
        (r[0], r[1])
        for r in await conn.fetch(
            """SELECT p.school_id, p.record_id FROM package_records p
               JOIN packages k USING (package_id) WHERE k.state = 'accepted'"""
        )
    )
    twice = [k for k, n in in_accepted.items() if n > 1]
    unpackaged = issued - set(in_accepted)
    stray = set(in_accepted) - issued
    follow_ups = sum(1 for r in packages.values() if r["sequence"] > 1)
    checks.append(
        Check(
            "every package accepted exactly once (database)",
            bool(packages)
            and len(accepted) == len(packages)
            and not (not_once or mixed or short or twice or unpackaged or stray),
            f"{len(packages)} packages ({follow_ups} follow-ups) {dict(states)}, "
            f"{len(attempts)} submission attempts; received not exactly once {len(not_once)}, "
            f"several receipts {len(mixed)}, accepted short {len(short)}; {len(issued)} issued "
            f"records: in two accepted packages {len(twice)}, in none {len(unpackaged)}, "
            f"not issued {len(stray)}",
        )
    )

    # 9. From the simulator's stored submissions: one receipt per package id, accepted, and
    # every issued record in exactly one of them.
    stored = await asyncio.to_thread(ministry.stored)
    by_key: dict[str, list[dict[str, Any]]] = {}
    for summary in stored:
        by_key.setdefault(summary["idempotency_key"], []).append(summary)
    several = [k for k, found in by_key.items() if len(found) != 1]
    unknown = set(by_key) - set(packages)
    never = set(packages) - set(by_key)
    wrong = [
        k
        for k, found in by_key.items()
        if k in packages and found[0]["receipt_id"] != packages[k]["receipt_id"]
    ]
    invalid = [s["receipt_id"] for s in stored if not s["valid"]]
    at_ministry = Counter(
        (s["index"].get("school_id"), rid) for s in stored if s["valid"] for rid in s["record_ids"]
    )
    twice_m = [k for k, n in at_ministry.items() if n > 1]
    missing_m = issued - set(at_ministry)
    stray_m = set(at_ministry) - issued
    checks.append(
        Check(
            "every package accepted exactly once (ministry's stored submissions)",
            bool(stored)
            and not (several or unknown or never or wrong or invalid)
            and not (twice_m or missing_m or stray_m),
            f"{len(stored)} stored for {len(packages)} packages; keys with several receipts "
            f"{len(several)}, unknown keys {len(unknown)}, packages never received {len(never)}, "
            f"receipt not the database's {len(wrong)}, invalid {len(invalid)}; records in two "
            f"{len(twice_m)}, issued records absent {len(missing_m)}, not issued {len(stray_m)}",
        )
    )

    # 10. The package status events of every issued record, on both streams.
    for stream, events in (("AMQP", driver.amqp_events), ("MQTT", mqtt.events)):
        seen: dict[tuple[str, str], set[str]] = {}
        for event in events.values():
            key = (str(event.get("school_id")), str(event.get("record_id")))
            seen.setdefault(key, set()).add(str(event.get("state")))
        lacking = Counter(
            state
            for record in issued
            for state in PACKAGE_STATES
            if state not in seen.get(record, ())
        )
        checks.append(
            Check(
                f"packaged, submitted, accepted_by_ministry events for every record on {stream}",
                bool(issued) and not lacking,
                f"{len(issued)} issued records; missing {dict(lacking) or 'none'}",
            )
        )

    # 11. No package request dead-lettered.
    letters = await dead_letters(amqp_url, "hocba.package.dead")
    reasons = Counter(str((m.headers or {}).get("x-hocba-reason-code")) for m in letters)
    checks.append(
        Check(
            "no package request dead-lettered",
            not letters,
            f"{len(driver.package_requests)} package requests, {len(letters)} dead-lettered "
            f"{dict(reasons)}",
        )
    )
    return checks


def _validate_all(paths: Iterable[str], roots: list[Path]) -> list[tuple[int, list[str], bool]]:
    paths = list(paths)
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        return list(pool.map(_validate, paths, [roots] * len(paths), chunksize=8))


def summary(checks: list[Check]) -> str:
    return json.dumps({c.name: c.holds for c in checks})
