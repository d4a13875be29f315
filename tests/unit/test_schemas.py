"""The published contract (schemas/, docs/asyncapi.yaml) is the code's, and parses."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from lxml import etree

from daemon.record.model import Subject
from daemon.record.schemas import published

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
ASYNCAPI_TOOL = ROOT / "tools" / "asyncapi"
XS = "{http://www.w3.org/2001/XMLSchema}"


def _tool_or_skip(present: bool, what: str) -> None:
    if not present:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is missing; CI must install it.")
        pytest.skip(f"{what} is not installed.")


def test_every_published_file_is_what_the_models_generate() -> None:
    for path, content in published(SCHEMAS).items():
        assert path.exists(), f"{path} is missing: run python -m daemon.record.schemas"
        assert path.read_bytes() == content, (
            f"{path.relative_to(ROOT)} drifted from the models: run python -m daemon.record.schemas"
        )


def test_the_xsd_names_the_same_codes_as_the_model() -> None:
    tree = etree.parse(str(SCHEMAS / "hocba-record.xsd"))

    def codes(name: str) -> set[str]:
        return {
            e.get("value")
            for e in tree.iterfind(f"{XS}simpleType[@name='{name}']//{XS}enumeration")
        }

    assert codes("Subject") == {s.value for s in Subject}
    assert codes("Level") == {"T", "H", "C"}
    assert codes("Rating") == {"T", "D", "C"}
    assert codes("Overall") == {"HTXS", "HTT", "HT", "CHT"}


def test_xmllint_accepts_the_sample_record_and_refuses_a_broken_one(tmp_path: Path) -> None:
    _tool_or_skip(shutil.which("xmllint") is not None, "xmllint (libxml2-utils)")
    xsd = str(SCHEMAS / "hocba-record.xsd")
    sample = SCHEMAS / "examples" / "record.xml"
    ok = subprocess.run(
        ["xmllint", "--noout", "--schema", xsd, str(sample)], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    broken = tmp_path / "broken.xml"
    broken.write_bytes(sample.read_bytes().replace(b"<score>10</score>", b"<score>11</score>"))
    bad = subprocess.run(
        ["xmllint", "--noout", "--schema", xsd, str(broken)], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "score" in bad.stderr


def test_the_asyncapi_parser_accepts_the_document_and_its_schemas(tmp_path: Path) -> None:
    installed = shutil.which("node") is not None and (ASYNCAPI_TOOL / "node_modules").exists()
    _tool_or_skip(installed, "node and tools/asyncapi/node_modules (npm ci)")
    run = subprocess.run(
        ["node", "validate.mjs", str(ROOT / "docs" / "asyncapi.yaml")],
        cwd=ASYNCAPI_TOOL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "9 channels" in run.stdout
    # The parser really follows the $refs into schemas/: a dangling one fails.
    broken = ROOT / "docs" / f".broken-{os.getpid()}.yaml"
    text = (ROOT / "docs" / "asyncapi.yaml").read_text()
    broken.write_text(text.replace("hocba.record_status.v1.json", "missing.json"))
    try:
        bad = subprocess.run(
            ["node", "validate.mjs", str(broken)],
            cwd=ASYNCAPI_TOOL,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        broken.unlink()
    assert bad.returncode != 0 and "missing.json" in bad.stdout
