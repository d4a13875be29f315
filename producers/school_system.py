"""The sample school-system producer: what a VnEdu-like system publishes to hocba-signer.

It renders sample records as PDFs (Vietnamese text, DejaVu font), mints the signer's
consent as the school system would after authenticating the signer, and builds
`hocba.sign_request.v1` messages for each stage.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from fpdf import FPDF
from PIL import Image

from daemon import consent
from daemon.messages import RecordInfo
from daemon.record.model import (
    GENERAL_COMPETENCE_TITLES,
    QUALITY_TITLES,
    SPECIFIC_COMPETENCE_TITLES,
    Competences,
    Qualities,
    RecordData,
    Subject,
    SubjectResult,
    overall_result,
)
from daemon.stages import Stage
from daemon.verification.described import RecordDescription, xmp

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
VIETNAM = timezone(timedelta(hours=7))
SUBJECTS = (
    "Tiếng Việt",
    "Toán",
    "Đạo đức",
    "Tự nhiên và Xã hội",
    "Khoa học",
    "Lịch sử và Địa lí",
    "Giáo dục thể chất",
    "Âm nhạc",
    "Mĩ thuật",
    "Tin học và Công nghệ",
    "Tiếng Anh",
)
LEVELS = ("Hoàn thành tốt", "Hoàn thành", "Hoàn thành xuất sắc")
COMMENTS = (
    "Em chăm chỉ, tích cực tham gia các hoạt động học tập; đọc to, rõ ràng, viết đúng chính tả.",
    "Em tiếp thu bài nhanh, biết hợp tác với bạn bè, tự giác hoàn thành nhiệm vụ được giao.",
    "Em có tiến bộ rõ rệt trong môn Toán; cần rèn thêm kĩ năng trình bày bài làm.",
)


@dataclass(frozen=True)
class ConsentSigner:
    """A school's consent minting key, as its management system holds it."""

    school_id: str
    alg: consent.Alg
    private_key: bytes

    def mint(
        self, signer_id: str, stage: Stage, recs: list[tuple[str, str]], ttl_s: int = 3600
    ) -> str:
        claims: dict[str, object] = {
            "iss": self.school_id,
            "sub": signer_id,
            "stg": stage.value,
            "exp": int(time.time()) + ttl_s,
            "iat": int(time.time()),
        }
        if len(recs) == 1:
            claims["rec"], claims["dig"] = recs[0]
        else:
            claims["recs"] = [list(pair) for pair in recs]
        return consent.mint(claims, self.alg, self.private_key)


def sample_record(rng: random.Random, school_id: str, run: str, n: int) -> RecordInfo:
    grade = rng.randint(1, 5)
    class_name = f"{grade}{rng.choice('ABCD')}"
    return RecordInfo(
        record_id=f"2025-2026-{class_name}-{run}-{n:04d}",
        # Unique per record: one live record per student and round (duplicate_record).
        student_id=f"{school_id[:8]}{hashlib.sha256(f'{run}/{n}'.encode()).hexdigest()[:12]}",
        academic_year="2025-2026",
        grade=grade,
        class_name=class_name,
        submission_round=1,
    )


def sample_pdf(
    info: RecordInfo, school_name: str, pages: int = 3, seed: int = 0, photo_px: int = 0
) -> bytes:
    """A record rendered the way the ministry's template lays it out, in Vietnamese.

    `photo_px` > 0 adds a generated student photo of that many pixels a side on the
    first page (a scanned photo barely compresses: ~3 bytes a pixel), which brings the
    PDF to the size real records have, for benchmarks.
    """
    rng = random.Random(f"{info.record_id}-{seed}")
    pdf = FPDF(format="A4")
    pdf.set_creator("hocba-signer sample school system")
    pdf.set_title(f"Học bạ số {info.record_id}")
    # Who the record is about, for verifiers (daemon.verification.described).
    pdf.set_xmp_metadata(xmp(RecordDescription(info.record_id, info.student_id)))
    pdf.add_font("DejaVu", "", str(FONT_DIR / "DejaVuSans.ttf"))
    pdf.add_font("DejaVu", "B", str(FONT_DIR / "DejaVuSans-Bold.ttf"))
    for page in range(pages):
        pdf.add_page()
        pdf.set_font("DejaVu", "B", 14)
        pdf.cell(
            0, 10, "CỘNG HOÀ XÃ HỘI CHỦ NGHĨA VIỆT NAM", align="C", new_x="LMARGIN", new_y="NEXT"
        )
        pdf.set_font("DejaVu", "", 11)
        pdf.cell(0, 7, "Độc lập - Tự do - Hạnh phúc", align="C", new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("DejaVu", "B", 13)
        pdf.cell(0, 12, f"HỌC BẠ SỐ — {school_name}", align="C", new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("DejaVu", "", 10)
        pdf.multi_cell(
            0,
            6,
            (
                f"Mã hồ sơ: {info.record_id}    Năm học: {info.academic_year}\n"
                f"Lớp: {info.class_name}    Khối: {info.grade}    Trang {page + 1}/{pages}"
            ),
            new_x="LMARGIN",
            new_y="NEXT",
        )
        if photo_px and page == 0:
            pdf.image(_photo(rng, photo_px), x=160, y=40, w=30)
        pdf.ln(3)
        for subject in SUBJECTS:
            level = rng.choice(LEVELS)
            mark = rng.randint(5, 10)
            pdf.cell(70, 7, subject, border=1)
            pdf.cell(40, 7, level, border=1)
            pdf.cell(20, 7, str(mark), border=1, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(4)
        pdf.multi_cell(0, 6, "Nhận xét của giáo viên chủ nhiệm: " + rng.choice(COMMENTS))
    return bytes(pdf.output())


def _photo(rng: random.Random, side_px: int) -> Image.Image:
    """A deterministic, photo-like (noisy, hence incompressible) RGB image."""
    return Image.frombytes("RGB", (side_px, side_px), rng.randbytes(side_px * side_px * 3))


def sign_request(
    school_id: str,
    info: RecordInfo,
    stage: Stage,
    signer_id: str,
    consent_token: str,
    pdf: bytes | None = None,
    request_id: uuid.UUID | None = None,
) -> tuple[str, bytes, str]:
    """(routing key, JSON body, request_id) of one `hocba.sign_request.v1`."""
    rid = str(request_id or uuid.uuid4())
    body: dict[str, object] = {
        "type": "hocba.sign_request.v1",
        "request_id": rid,
        "school_id": school_id,
        "record": info.model_dump(),
        "stage": stage.value,
        "signer_id": signer_id,
        "consent": consent_token,
        "requested_at": datetime.now(VIETNAM).isoformat(timespec="milliseconds"),
    }
    if pdf is not None:
        body["document"] = {
            "sha256": hashlib.sha256(pdf).hexdigest(),
            "content_b64": base64.b64encode(pdf).decode("ascii"),
        }
    return f"sign.{school_id}", json.dumps(body, ensure_ascii=False).encode(), rid


def sample_record_data(rng: random.Random, info: RecordInfo, school_id: str) -> RecordData:
    """A plausible Thông tư 27 record for `info`, its overall result as the rules give it."""
    grade = info.grade
    subjects = []
    for subject in Subject:
        if not subject.required_in(grade):
            continue
        score = rng.randint(7, 10) if subject.tested_in(grade) else None
        result = {"subject": subject, "level": rng.choice("TTH"), "score": score}
        subjects.append(SubjectResult.model_validate({**result, "comment": rng.choice(COMMENTS)}))
    rating = {k: rng.choice(("T", "T", "D")) for k in QUALITY_TITLES}
    competence = {
        k: rng.choice(("T", "D")) for k in (*GENERAL_COMPETENCE_TITLES, *SPECIFIC_COMPETENCE_TITLES)
    }
    fields: dict[str, object] = {
        "student": {
            "full_name": f"Học sinh {info.student_id[-5:]}",
            "date_of_birth": f"{2020 - grade}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}",
            "gender": rng.choice(("nam", "nu")),
            "ethnicity": "Kinh",
            "place_of_birth": "Quận 3, Thành phố Hồ Chí Minh",
            "student_id": info.student_id,
        },
        "school": {
            "school_id": school_id,
            "name": f"Trường Tiểu học {school_id}",
            "district": "Quận 3",
            "province": "Thành phố Hồ Chí Minh",
        },
        "academic_year": info.academic_year,
        "grade": grade,
        "class_name": info.class_name,
        "subjects": subjects,
        "qualities": rating,
        "competences": competence,
        "overall_result": "HT",
        "teacher_comment": rng.choice(COMMENTS),
        "completed_on": "2026-05-20",
    }
    # The overall result is not the school's choice: Thông tư 27 derives it.
    unchecked = RecordData.model_construct(
        subjects=subjects,
        qualities=Qualities.model_validate(rating),
        competences=Competences.model_validate(competence),
    )
    fields["overall_result"] = overall_result(unchecked)
    return RecordData.model_validate(fields)


def sign_request_v2(
    school_id: str,
    info: RecordInfo,
    signer_id: str,
    consent_token: str,
    record_data: RecordData,
    request_id: uuid.UUID | None = None,
) -> tuple[str, bytes, str]:
    """(routing key, JSON body, request_id) of a teacher's `hocba.sign_request.v2` with data.

    Its consent's `dig` is `record_sha256(info.record_id, record_data)`: the school system
    renders nothing.
    """
    key, body, rid = sign_request(
        school_id, info, Stage.HOMEROOM_TEACHER, signer_id, consent_token, None, request_id
    )
    message = json.loads(body)
    message["type"] = "hocba.sign_request.v2"
    message["record_data"] = record_data.model_dump(mode="json", exclude_defaults=True)
    return key, json.dumps(message, ensure_ascii=False).encode(), rid
