"""`hocba-signer publish`: send one sign request as the school system would."""

from __future__ import annotations

import argparse
import hashlib
import re
from pathlib import Path
from typing import Any

import aio_pika

from daemon import topology
from daemon.dev import env as devenv
from daemon.messages import RecordInfo
from daemon.stages import Stage
from producers.school_system import sample_pdf, sign_request

DEFAULT_SIGNERS = {
    Stage.HOMEROOM_TEACHER: "GV-0001",
    Stage.PRINCIPAL: "BGH-0001",
    Stage.SCHOOL_SEAL: "SEAL",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=Path(".dev"), help="dev environment")
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--school", required=True)
    parser.add_argument("--record", required=True, help="record id, e.g. 2025-2026-5A-07")
    parser.add_argument("--stage", required=True, choices=[s.value for s in Stage])
    parser.add_argument("--signer", help="signer id (default: the dev signer of the stage)")
    parser.add_argument(
        "--pdf", type=Path, help="document for homeroom_teacher (default: a sample)"
    )
    parser.add_argument("--digest", help="sha256 of the version to sign (later stages)")


def record_info(school_id: str, record_id: str) -> RecordInfo:
    """Stable sample details for a record id, the same at every stage."""
    match = re.search(r"-(\d)([A-Z])\b", record_id)
    grade, letter = (int(match.group(1)), match.group(2)) if match else (5, "A")
    digits = hashlib.sha256(record_id.encode()).hexdigest()[:12]  # one student per record
    return RecordInfo(
        record_id=record_id,
        student_id=f"{school_id[:8]}{digits}",
        academic_year="2025-2026",
        grade=grade,
        class_name=f"{grade}{letter}",
        submission_round=1,
    )


async def publish_file(args: argparse.Namespace) -> dict[str, Any]:
    stage = Stage(args.stage)
    info = record_info(args.school, args.record)
    pdf: bytes | None = None
    if stage is Stage.HOMEROOM_TEACHER:
        pdf = args.pdf.read_bytes() if args.pdf else sample_pdf(info, f"Trường {args.school}")
        digest = hashlib.sha256(pdf).hexdigest()
    elif args.digest:
        digest = args.digest
    else:
        raise SystemExit("--digest is needed for principal and school_seal")
    signer = args.signer or DEFAULT_SIGNERS[stage]
    token = devenv.load_consent_signer(args.dir.resolve(), args.school).mint(
        signer, stage, [(args.record, digest)]
    )
    key, body, rid = sign_request(args.school, info, stage, signer, token, pdf)
    async with await aio_pika.connect(args.amqp_url) as connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(topology.REQUESTS)
        await exchange.publish(
            aio_pika.Message(
                body,
                content_type="application/json",
                message_id=rid,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=key,
        )
    return {"request_id": rid, "routing_key": key, "stage": stage.value, "digest": digest}
