"""A v2 record sent as data: rendered, signed through all three stages, its XML inside."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
from io import BytesIO
from pathlib import Path

from pyhanko.pdf_utils.reader import PdfFileReader

from daemon.app import Running
from daemon.blobs import FsStore
from daemon.record.attached import attached_record_xml
from daemon.record.xml import canonical_xml, record_sha256
from daemon.settings import Settings
from daemon.stages import ORDER, Stage
from daemon.verification import report as verify
from producers.school_system import sample_record_data, sign_request_v2
from tests.integration.conftest import SchoolSystem
from tests.services import StatusEvents

SCHOOL = "31000101"


async def test_a_record_sent_as_data_is_rendered_signed_and_issued(
    daemon: Running,
    school_system: SchoolSystem,
    status: StatusEvents,
    settings: Settings,
    tmp_path: Path,
) -> None:
    # Given a record as data, and the teacher's consent naming its canonical XML's digest
    info, _ = school_system.new_record(SCHOOL)
    data = sample_record_data(school_system.rng, info, SCHOOL)
    teacher = school_system.env.signer_for(SCHOOL, Stage.HOMEROOM_TEACHER.value)
    token = school_system.env.consent_signer(SCHOOL).mint(
        teacher, Stage.HOMEROOM_TEACHER, [(info.record_id, record_sha256(info.record_id, data))]
    )
    key, body, rid = sign_request_v2(SCHOOL, info, teacher, token, data)
    assert settings.signing.render_workers == 1
    before = {p.pid for p in multiprocessing.active_children()}

    # When it goes through every stage
    event = (await status.wait((await school_system.publish(key, body, rid)).request_id))[0]
    assert event["state"] == "signed_by_teacher", event["reason"]
    # rendered by a worker process the daemon started for it, not on its event loop
    assert len({p.pid for p in multiprocessing.active_children()} - before) == 1
    for stage in ORDER[1:]:
        sent = await school_system.sign(SCHOOL, info, stage, event["document_sha256"])
        event = (await status.wait(sent.request_id))[0]
        assert event["state"] != "rejected", event["reason"]

    # Then the issued PDF validates, and carries exactly the data the consent named
    assert event["state"] == "issued"
    issued = await FsStore(settings.store.path).get(event["document_sha256"])
    report = await asyncio.to_thread(verify.report, issued, settings.signing.trust_roots)
    assert report["valid"] and report["issued"], report
    assert attached_record_xml(issued) == canonical_xml(info.record_id, data)

    # and each box shows its signature: who signed, in what role, for which school
    reader = PdfFileReader(BytesIO(issued))
    for ref in reader.root["/AcroForm"]["/Fields"]:
        widget = ref.get_object()
        assert any(float(v) for v in widget["/Rect"]) and widget["/AP"]["/N"].get_object().data
    path = tmp_path / "issued.pdf"
    path.write_bytes(issued)
    pdftotext = await asyncio.create_subprocess_exec(
        "pdftotext", "-layout", str(path), "-", stdout=asyncio.subprocess.PIPE
    )
    text = (await pdftotext.communicate())[0].decode()
    for line in ("Chức vụ: Giáo viên chủ nhiệm", "Chức vụ: Hiệu trưởng", "Đơn vị: Truong"):
        assert line in text, text
    assert text.count("Ký bởi: ") == 3 and text.count("Ngày ký: ") == 3, text


async def test_a_consent_for_other_data_is_refused(
    daemon: Running, school_system: SchoolSystem, status: StatusEvents
) -> None:
    # Given a consent minted for the data before the teacher changed a comment
    info, _ = school_system.new_record(SCHOOL)
    data = sample_record_data(school_system.rng, info, SCHOOL)
    teacher = school_system.env.signer_for(SCHOOL, Stage.HOMEROOM_TEACHER.value)
    token = school_system.env.consent_signer(SCHOOL).mint(
        teacher, Stage.HOMEROOM_TEACHER, [(info.record_id, record_sha256(info.record_id, data))]
    )
    changed = data.model_copy(update={"teacher_comment": "Đã sửa nhận xét."})
    key, body, rid = sign_request_v2(SCHOOL, info, teacher, token, changed)

    # When it is sent, then it is refused as unauthorised, and nothing is signed
    event = (await status.wait((await school_system.publish(key, body, rid)).request_id))[0]
    assert event["state"] == "rejected"
    assert event["reason"]["code"] == "unauthorized"
    assert json.loads(body)["record_data"]["teacher_comment"] == "Đã sửa nhận xét."
