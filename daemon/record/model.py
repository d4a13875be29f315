"""`record_data`: the primary-school record of Thông tư 27/2020/TT-BGDĐT, Appendix 1.

Codes are ASCII so that every system can type them: subject levels T/H/C (Hoàn thành
tốt / Hoàn thành / Chưa hoàn thành), quality and competence ratings T/D/C (Tốt / Đạt /
Cần cố gắng), overall results HTXS/HTT/HT/CHT. A rule broken inside the record is an
error whose context names its path (`at`), so the message says exactly which field.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from pydantic import model_validator as _model_validator
from pydantic_core import PydanticCustomError

from daemon.repertoire import REPERTOIRE

_XML_TEXT = "^[" + "".join(f"\\u{a:04x}-\\u{b:04x}" for a, b in REPERTOIRE) + "\\n]*$"
Text = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=_XML_TEXT)
]
Comment = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=600, pattern=_XML_TEXT)
]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Subject(StrEnum):
    """The subjects and educational activities of the 2018 programme, grades 1 to 5."""

    TIENG_VIET = "tieng_viet"
    TOAN = "toan"
    DAO_DUC = "dao_duc"
    TU_NHIEN_XA_HOI = "tu_nhien_xa_hoi"
    KHOA_HOC = "khoa_hoc"
    LICH_SU_DIA_LI = "lich_su_dia_li"
    TIN_HOC_CONG_NGHE = "tin_hoc_cong_nghe"
    NGOAI_NGU_1 = "ngoai_ngu_1"
    GIAO_DUC_THE_CHAT = "giao_duc_the_chat"
    AM_NHAC = "am_nhac"
    MI_THUAT = "mi_thuat"
    HOAT_DONG_TRAI_NGHIEM = "hoat_dong_trai_nghiem"
    TIENG_DAN_TOC = "tieng_dan_toc"

    @property
    def name_vi(self) -> str:
        return SUBJECT_TITLES[self]

    def taught_in(self, grade: int) -> bool:
        return grade in _TAUGHT[self]

    def required_in(self, grade: int) -> bool:
        return grade in _REQUIRED.get(self, _TAUGHT[self])

    def tested_in(self, grade: int) -> bool:
        """Whether the subject has an end-of-year test (a score) in this grade."""
        return grade in _TESTED.get(self, ())


SUBJECT_TITLES = {
    Subject.TIENG_VIET: "Tiếng Việt",
    Subject.TOAN: "Toán",
    Subject.DAO_DUC: "Đạo đức",
    Subject.TU_NHIEN_XA_HOI: "Tự nhiên và Xã hội",
    Subject.KHOA_HOC: "Khoa học",
    Subject.LICH_SU_DIA_LI: "Lịch sử và Địa lí",
    Subject.TIN_HOC_CONG_NGHE: "Tin học và Công nghệ",
    Subject.NGOAI_NGU_1: "Ngoại ngữ 1",
    Subject.GIAO_DUC_THE_CHAT: "Giáo dục thể chất",
    Subject.AM_NHAC: "Nghệ thuật (Âm nhạc)",
    Subject.MI_THUAT: "Nghệ thuật (Mĩ thuật)",
    Subject.HOAT_DONG_TRAI_NGHIEM: "Hoạt động trải nghiệm",
    Subject.TIENG_DAN_TOC: "Tiếng dân tộc",
}
_ALL = range(1, 6)
_TAUGHT: dict[Subject, Iterable[int]] = {
    **{s: _ALL for s in Subject},
    Subject.TU_NHIEN_XA_HOI: range(1, 4),
    Subject.KHOA_HOC: range(4, 6),
    Subject.LICH_SU_DIA_LI: range(4, 6),
    Subject.TIN_HOC_CONG_NGHE: range(3, 6),
}
# Optional where taught: a minority language always, a foreign language in grades 1-2.
_REQUIRED: dict[Subject, Iterable[int]] = {
    Subject.TIENG_DAN_TOC: (),
    Subject.NGOAI_NGU_1: range(3, 6),
}
_TESTED: dict[Subject, Iterable[int]] = {
    Subject.TIENG_VIET: _ALL,
    Subject.TOAN: _ALL,
    Subject.KHOA_HOC: range(4, 6),
    Subject.LICH_SU_DIA_LI: range(4, 6),
    Subject.TIN_HOC_CONG_NGHE: range(4, 6),
    Subject.NGOAI_NGU_1: range(4, 6),
}

Level = Literal["T", "H", "C"]
LEVEL_TITLES = {"T": "Hoàn thành tốt", "H": "Hoàn thành", "C": "Chưa hoàn thành"}
Rating = Literal["T", "D", "C"]
RATING_TITLES = {"T": "Tốt", "D": "Đạt", "C": "Cần cố gắng"}
Overall = Literal["HTXS", "HTT", "HT", "CHT"]
OVERALL_TITLES = {
    "HTXS": "Hoàn thành xuất sắc",
    "HTT": "Hoàn thành tốt",
    "HT": "Hoàn thành",
    "CHT": "Chưa hoàn thành",
}


def _error(at: str, message: str) -> PydanticCustomError:
    # `at` is the path below the failing model; messages.py appends it to the location.
    return PydanticCustomError("record_rule", message, {"at": at})


class Student(_Frozen):
    full_name: Text
    date_of_birth: date
    gender: Literal["nam", "nu"]
    ethnicity: Text
    place_of_birth: Text
    student_id: Annotated[str, StringConstraints(min_length=1, max_length=32)]


class School(_Frozen):
    school_id: Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z_-]{1,32}$")]
    name: Text
    district: Text
    province: Text


class SubjectResult(_Frozen):
    subject: Subject
    level: Level
    score: int | None = None
    comment: Comment = ""

    @field_validator("score")
    @classmethod
    def _score_range(cls, score: int | None) -> int | None:
        if score is not None and not 1 <= score <= 10:
            raise PydanticCustomError("score_range", "a test score is from 1 to 10")
        return score


class Qualities(_Frozen):
    """Phẩm chất chủ yếu."""

    yeu_nuoc: Rating
    nhan_ai: Rating
    cham_chi: Rating
    trung_thuc: Rating
    trach_nhiem: Rating
    comment: Comment = ""


class Competences(_Frozen):
    """Năng lực chung (the first three) and năng lực đặc thù."""

    tu_chu_tu_hoc: Rating
    giao_tiep_hop_tac: Rating
    giai_quyet_van_de_sang_tao: Rating
    ngon_ngu: Rating
    tinh_toan: Rating
    khoa_hoc: Rating
    tham_mi: Rating
    the_chat: Rating
    comment: Comment = ""


QUALITY_TITLES = {
    "yeu_nuoc": "Yêu nước",
    "nhan_ai": "Nhân ái",
    "cham_chi": "Chăm chỉ",
    "trung_thuc": "Trung thực",
    "trach_nhiem": "Trách nhiệm",
}
GENERAL_COMPETENCE_TITLES = {
    "tu_chu_tu_hoc": "Tự chủ và tự học",
    "giao_tiep_hop_tac": "Giao tiếp và hợp tác",
    "giai_quyet_van_de_sang_tao": "Giải quyết vấn đề và sáng tạo",
}
SPECIFIC_COMPETENCE_TITLES = {
    "ngon_ngu": "Ngôn ngữ",
    "tinh_toan": "Tính toán",
    "khoa_hoc": "Khoa học",
    "tham_mi": "Thẩm mĩ",
    "the_chat": "Thể chất",
}


class RecordData(_Frozen):
    """One student's record for one school year, as the homeroom teacher completed it."""

    student: Student
    school: School
    academic_year: Annotated[str, StringConstraints(pattern=r"^\d{4}-\d{4}$")]
    grade: int = Field(ge=1, le=5, description="Primary school: grades 1 to 5.")
    class_name: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    subjects: Annotated[list[SubjectResult], Field(min_length=1, max_length=20)]
    qualities: Qualities
    competences: Competences
    overall_result: Overall
    commendations: Annotated[list[Text], Field(max_length=10)] = []
    teacher_comment: Comment = ""
    homeroom_teacher_name: Text | None = None
    principal_name: Text | None = None
    completed_on: date = Field(
        description="The date written above the signatures; also the PDF's creation date."
    )

    @_model_validator(mode="after")
    def _template_rules(self) -> RecordData:
        self._check_subjects()
        expected = overall_result(self)
        if self.overall_result != expected:
            raise _error(
                "overall_result",
                f"the results give {expected} ({OVERALL_TITLES[expected]}) under "
                f"Thông tư 27/2020, not {self.overall_result}",
            )
        return self

    def _check_subjects(self) -> None:
        seen: set[Subject] = set()
        for i, result in enumerate(self.subjects):
            at = f"subjects[{i}]"
            if result.subject in seen:
                raise _error(f"{at}.subject", f"{result.subject} is listed twice")
            seen.add(result.subject)
            if not result.subject.taught_in(self.grade):
                raise _error(
                    f"{at}.subject", f"{result.subject} is not taught in grade {self.grade}"
                )
            tested = result.subject.tested_in(self.grade)
            if tested and result.score is None:
                raise _error(
                    f"{at}.score",
                    f"{result.subject} has an end-of-year test in grade {self.grade}",
                )
            if not tested and result.score is not None:
                raise _error(
                    f"{at}.score",
                    f"{result.subject} has no end-of-year test in grade {self.grade}",
                )
        missing = [s.value for s in Subject if s.required_in(self.grade) and s not in seen]
        if missing:
            raise _error("subjects", f"grade {self.grade} also needs {', '.join(missing)}")


def overall_result(data: RecordData) -> Overall:
    """The overall result Thông tư 27/2020 (Article 9) gives these results."""
    levels = {r.level for r in data.subjects}
    ratings = set(_ratings(data))
    scores = [r.score for r in data.subjects if r.score is not None]
    if "C" in levels or "C" in ratings:
        return "CHT"
    if levels == {"T"} and ratings == {"T"}:
        if all(s >= 9 for s in scores):
            return "HTXS"
        if all(s >= 7 for s in scores):
            return "HTT"
    return "HT"


def _ratings(data: RecordData) -> list[str]:
    q, c = data.qualities, data.competences
    return [getattr(q, k) for k in QUALITY_TITLES] + [
        getattr(c, k) for k in (*GENERAL_COMPETENCE_TITLES, *SPECIFIC_COMPETENCE_TITLES)
    ]


class Correction(_Frozen):
    """`corrects`: this record replaces an issued one (processed in later work)."""

    record_id: Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z._-]{1,64}$")]
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
    authorised_by: Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z._-]{1,64}$")]
