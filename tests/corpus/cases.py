"""The bad-input corpus as data: raw bodies, changes to a valid request, bad PDFs.

Each case names the reason code the daemon must answer with. Small inputs are files
beside this module (`generate.py` writes them); the big ones are built here.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.corpus.generate import _assemble, plain_pdf

HERE = Path(__file__).parent


@dataclass(frozen=True)
class RawBody:
    """Sent verbatim with routing key sign.<school>."""

    name: str
    body: bytes = field(repr=False)
    code: str = "invalid_message"


@dataclass(frozen=True)
class Change:
    """A change to a valid homeroom_teacher request (fresh record, valid consent)."""

    name: str
    code: str
    set: dict[str, Any]
    delete: list[str]
    routing_key: str | None = None
    consent_digest: str | None = None

    def apply(self, body: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
        changed = copy.deepcopy(body)
        for path in self.delete:
            parent, last = _parent(changed, path)
            parent.pop(last, None)
        for path, value in self.set.items():
            parent, last = _parent(changed, path)
            parent[last] = _substitute(value, values)
        return changed


@dataclass(frozen=True)
class BadPdf:
    """Sent as the homeroom teacher's document, with a matching hash and consent."""

    name: str
    pdf: bytes = field(repr=False)
    code: str = "not_a_pdf"


def raw_bodies(max_message_bytes: int) -> list[RawBody]:
    cases = [RawBody(p.name, p.read_bytes()) for p in sorted((HERE / "bodies").iterdir())]
    cases.append(RawBody("deep_nesting.json", b"[" * 100_000 + b"]" * 100_000))
    huge = b'{"type": "hocba.sign_request.v1", "pad": "' + b"x" * max_message_bytes + b'"}'
    cases.append(RawBody("huge_message.json", huge))
    return cases


def changes() -> list[Change]:
    data = json.loads((HERE / "messages.json").read_text("utf-8"))
    return [
        Change(
            name,
            spec["code"],
            spec.get("set", {}),
            spec.get("delete", []),
            spec.get("routing_key"),
            spec.get("consent_digest"),
        )
        for name, spec in data.items()
        if not name.startswith("_")
    ]


def bad_pdfs(max_document_bytes: int) -> list[BadPdf]:
    cases = [BadPdf(p.name, p.read_bytes()) for p in sorted((HERE / "pdfs").glob("*.pdf"))]
    cases.append(BadPdf("huge_stream.pdf", huge_stream_pdf(max_document_bytes + 1024)))
    cases.append(BadPdf("over_size_limit.pdf", plain_pdf() + b"%" * max_document_bytes))
    return cases


def huge_stream_pdf(size: int) -> bytes:
    """A one-page PDF whose content stream alone is `size` bytes."""
    line = b"BT /F1 12 Tf 72 720 Td (x) Tj ET\n"
    content = line * (size // len(line) + 1)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Count 1 /Kids [3 0 R] >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
    ]
    return _assemble(objects)


def _parent(body: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    *parents, last = path.split(".")
    node = body
    for part in parents:
        node = node.setdefault(part, {})
    return node, last


def _substitute(value: Any, values: dict[str, str]) -> Any:
    if not isinstance(value, str):
        return value
    if value == "{long}":
        return "x" * 16_385
    for key, replacement in values.items():
        value = value.replace("{" + key + "}", replacement)
    return value
