"""The signer CSV of `hocba-signer signer import`: one signer a line, under a header.

    school_id,signer_id,stage
    31000123,GV-0042,homeroom_teacher
    31000123,BGH-0001,principal

Columns are found by name in the header (any order; others, such as a name, are
ignored and never stored). `school_id` may be left out when the command names the
school (`--school`). A stage is its contract name or its signature field's
(`GVCN`, `HieuTruong`, `DauTruong`). Line numbers are the file's, header included,
as a spreadsheet shows them.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

from daemon.errors import InvalidMessage
from daemon.stages import Stage

_ID = re.compile(r"^[0-9A-Za-z._-]{1,64}$")
_SCHOOL = re.compile(r"^[0-9A-Za-z_-]{1,32}$")
_STAGES = {
    **{stage.value: stage for stage in Stage},
    **{stage.field_name.lower(): stage for stage in Stage},
}


@dataclass(frozen=True)
class SignerLine:
    line: int
    school_id: str
    signer_id: str
    stage: Stage


@dataclass(frozen=True)
class LineError:
    line: int
    signer_id: str | None
    code: str
    message: str

    def __str__(self) -> str:
        who = f"signer {self.signer_id}: " if self.signer_id else ""
        return f"line {self.line}: {who}{self.message}"


def parse(text: str, school_id: str | None = None) -> tuple[list[SignerLine], list[LineError]]:
    """Every well-formed line, and an error for each line that is not."""
    rows = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    header = next(rows, None)
    if header is None:
        raise InvalidMessage("line 1: the file is empty; expected a header such as "
                             "school_id,signer_id,stage")  # fmt: skip
    columns = {name.strip().lower(): n for n, name in enumerate(header)}
    needed = ["signer_id", "stage"] + ([] if school_id else ["school_id"])
    missing = [name for name in needed if name not in columns]
    if missing:
        raise InvalidMessage(f"line 1: the header lacks {', '.join(missing)}")
    lines: list[SignerLine] = []
    errors: list[LineError] = []
    first_seen: dict[tuple[str, str], int] = {}
    for row in rows:
        number = rows.line_num  # the last physical line of the row (quoted newlines count)
        if not any(cell.strip() for cell in row):
            continue
        parsed = _line(number, row, columns, school_id)
        if isinstance(parsed, LineError):
            errors.append(parsed)
            continue
        key = (parsed.school_id, parsed.signer_id)
        if key in first_seen:
            errors.append(_error(parsed, f"appears again (first on line {first_seen[key]})"))
            continue
        first_seen[key] = number
        lines.append(parsed)
    return lines, errors


def _line(
    number: int, row: list[str], columns: dict[str, int], default_school: str | None
) -> SignerLine | LineError:
    def cell(name: str) -> str:
        index = columns.get(name)
        return row[index].strip() if index is not None and index < len(row) else ""

    signer_id = cell("signer_id")
    if not _ID.match(signer_id):
        return LineError(number, None, "invalid_message", f"signer_id {signer_id!r} is not an id")
    school_id = cell("school_id") or default_school or ""
    if default_school and school_id != default_school:
        message = f"school_id {school_id} is not the school named by --school ({default_school})"
        return LineError(number, signer_id, "invalid_message", message)
    if not _SCHOOL.match(school_id):
        return LineError(
            number, signer_id, "invalid_message", f"school_id {school_id!r} is not an id"
        )
    stage = _STAGES.get(cell("stage").lower())
    if stage is None:
        choices = ", ".join(s.value for s in Stage)
        message = f"stage {cell('stage')!r} is none of {choices}"
        return LineError(number, signer_id, "invalid_message", message)
    return SignerLine(number, school_id, signer_id, stage)


def _error(line: SignerLine, message: str) -> LineError:
    return LineError(line.line, line.signer_id, "invalid_message", message)
