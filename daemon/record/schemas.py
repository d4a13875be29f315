"""Writes the published contract in schemas/ from the models: `python -m daemon.record.schemas`.

JSON Schema for every message (from the pydantic models), the record XSD and the
sample record XML. tests/unit/test_schemas.py fails when a file differs from what this
writes, so the published contract cannot drift from the code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lxml import etree
from pydantic import BaseModel

from daemon.messages import (
    PackageRequest,
    SignRequest,
    SignRequestV2,
    StatusEvent,
    StatusEventV2,
)
from daemon.record.model import RecordData
from daemon.record.xml import canonical_xml, schema_bytes

BASE_URI = "https://hocba-signer.example/schemas/"
MESSAGES: dict[str, type[BaseModel]] = {
    "hocba.sign_request.v1": SignRequest,
    "hocba.sign_request.v2": SignRequestV2,
    "hocba.record_status.v1": StatusEvent,
    "hocba.record_status.v2": StatusEventV2,
    "hocba.package_request.v1": PackageRequest,
}
EXAMPLE_RECORD_ID = "2025-2026-5A-07"


def message_schema(name: str, model: type[BaseModel]) -> dict[str, object]:
    schema = model.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{BASE_URI}{name}.json",
        **schema,
    }


def published(root: Path) -> dict[Path, bytes]:
    """Every file of schemas/ as the code defines it, by path under `root`."""
    files = {
        root / f"{name}.json": (
            json.dumps(message_schema(name, model), indent=2, ensure_ascii=False) + "\n"
        ).encode()
        for name, model in MESSAGES.items()
    }
    files[root / "hocba-record.xsd"] = schema_bytes()
    example = RecordData.model_validate_json((root / "examples" / "record_data.json").read_bytes())
    canonical = canonical_xml(EXAMPLE_RECORD_ID, example)
    tree = etree.fromstring(canonical)
    etree.indent(tree, space="  ")
    files[root / "examples" / "record.xml"] = (
        etree.tostring(tree, xml_declaration=True, encoding="UTF-8") + b"\n"
    )
    return files


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("schemas")
    for path, content in published(root).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
