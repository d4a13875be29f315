"""Who signed what, and sound containers: each attack made with real keys, caught by its code.

Every file is signed with the SoftHSM token's real keys (two schools: A and B); the
verdict is asked of `hocba-signer verify` (its JSON and exit code), of the package
check, and of the ministry simulator.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from daemon.dev import ministry_sim
from daemon.hsm import SigningPool
from daemon.packaging import check
from daemon.packaging.container import MIMETYPE
from daemon.settings import SigningSettings
from tests.hsm_fixtures import SCHOOLS, DevHsm
from tests.integration.attack_kit import (
    Forge,
    Listed,
    drop_from_central_directory,
    package,
    record_pdf,
)
from tests.integration.cli_kit import verify_json

A, B = SCHOOLS
TOKEN = "verdict-test-token"


@pytest.fixture(scope="module")
async def forge(dev_hsm: DevHsm) -> AsyncIterator[Forge]:
    pool = SigningPool(dev_hsm.settings(workers=1), SigningSettings())
    await pool.start()
    yield Forge(dev_hsm, pool)
    await pool.close()


@pytest.fixture(scope="module")
def root_pem(dev_hsm: DevHsm) -> Path:
    return dev_hsm.base_dir / "pki" / "root.pem"


def codes(report: dict[str, Any]) -> set[str]:
    return {p["code"] for p in report["problems"]}


# Records


async def test_a_genuine_record_is_issued_with_its_three_signers(
    forge: Forge, root_pem: Path, tmp_path: Path
) -> None:
    path = tmp_path / "r.pdf"
    path.write_bytes(await forge.issued("2025-2026-5A-01", "3100012300001", A))

    code, report = await verify_json(path, root_pem)

    assert (code, report["verdict"], report["problems"]) == (0, "issued", [])
    assert [
        (s["field"], s["role"], s["school_id"], s["role_ok"]) for s in report["signatures"]
    ] == [
        ("GVCN", "homeroom_teacher", A, True),
        ("HieuTruong", "principal", A, True),
        ("DauTruong", "school_seal", A, True),
    ]
    assert report["record"]["record_id"] == "2025-2026-5A-01"


async def test_a_record_with_only_the_teachers_signature_is_not_issued(
    forge: Forge, root_pem: Path, tmp_path: Path
) -> None:
    path = tmp_path / "r.pdf"
    pdf = record_pdf("2025-2026-5A-02", "3100012300002", A)
    path.write_bytes(await forge.sign(pdf, forge.right_keys(A)[:1]))

    code, report = await verify_json(path, root_pem)

    assert code == 3 and report["verdict"] == "not_issued"
    assert codes(report) == {"incomplete"}
    assert report["signatures"][0]["role_ok"] is True


async def test_all_three_fields_signed_with_one_teachers_key_is_invalid(
    forge: Forge, root_pem: Path, tmp_path: Path
) -> None:
    path = tmp_path / "r.pdf"
    teacher = forge.key(A, "GV-0001")
    pdf = record_pdf("2025-2026-5A-03", "3100012300003", A)
    path.write_bytes(await forge.sign(pdf, [teacher, teacher, teacher]))

    code, report = await verify_json(path, root_pem)

    assert code == 1 and report["verdict"] == "invalid"
    assert {"role_mismatch", "same_signer_twice"} <= codes(report)
    # Each signature is cryptographically fine: only who signed is wrong.
    assert all(s["intact"] and s["valid"] and s["trusted"] for s in report["signatures"])
    assert [s["role_ok"] for s in report["signatures"]] == [True, False, False]


async def test_the_seal_field_signed_with_another_schools_seal_is_invalid(
    forge: Forge, root_pem: Path, tmp_path: Path
) -> None:
    path = tmp_path / "r.pdf"
    keys = [*forge.right_keys(A)[:2], forge.key(B, "SEAL")]
    pdf = record_pdf("2025-2026-5A-04", "3100012300004", A)
    path.write_bytes(await forge.sign(pdf, keys))

    code, report = await verify_json(path, root_pem)

    assert code == 1 and report["verdict"] == "invalid"
    assert codes(report) == {"wrong_school"}
    seal = report["signatures"][2]
    assert (seal["role"], seal["school_id"], seal["role_ok"]) == ("school_seal", B, False)


async def test_a_record_signed_by_two_teachers_of_its_school_is_invalid(
    forge: Forge, root_pem: Path, tmp_path: Path
) -> None:
    path = tmp_path / "r.pdf"
    keys = [forge.key(A, "GV-0001"), forge.key(A, "GV-0002"), forge.key(A, "SEAL")]
    path.write_bytes(await forge.sign(record_pdf("2025-2026-5A-05", "31000123005", A), keys))

    code, report = await verify_json(path, root_pem)

    assert code == 1 and codes(report) == {"role_mismatch"}


# Packages


async def genuine(forge: Forge, n: int, school: str = A) -> list[Listed]:
    return [
        Listed(
            f"2025-2026-5A-1{i}",
            f"31000123001{i}",
            await forge.issued(f"2025-2026-5A-1{i}", f"31000123001{i}", school),
        )
        for i in range(n)
    ]


async def attacks(forge: Forge, tmp: Path) -> dict[str, tuple[Path, str]]:
    """Each forged package, with the problem code that must catch it."""
    records = await genuine(forge, 2)
    one, two = records
    made: dict[str, tuple[Path, str]] = {}

    async def add(name: str, code: str, *args: Any, **kwargs: Any) -> Path:
        path = await package(forge, tmp / f"{name}.asice", *args, **kwargs)
        made[name] = (path, code)
        return path

    await add("sealed_by_another_school", "seal_school_mismatch", A, records, sealed_by=B)
    await add(
        "unsigned_meta_inf_entry", "unexpected_meta_inf_entry", A, records,
        extra={"META-INF/signature002.p7s": b"0\x80 an extra signature nobody checks"},
    )  # fmt: skip
    await add(
        "dot_dot_entry", "zip_unsafe_name", A, records,
        extra={"records/../evil.pdf": two.pdf},
    )  # fmt: skip
    await add("record_listed_twice", "duplicate_record", A, [one, two, one])
    await add(
        "another_student", "student_mismatch", A, [Listed(one.record_id, "3100099999999", one.pdf)]
    )
    await add(
        "pdf_under_another_id",
        "record_mismatch",
        A,
        [Listed(one.record_id, one.student_id, two.pdf)],
    )
    hidden = await add(
        "local_entry_not_in_directory", "zip_unlisted_entry", A, records,
        extra={"records/2025-2026-5A-99.pdf": two.pdf},
    )  # fmt: skip
    drop_from_central_directory(hidden, "records/2025-2026-5A-99.pdf")
    other = await genuine(forge, 1, B)
    await add("another_schools_pdf", "wrong_school", A, other)
    return made


@pytest.fixture(scope="module")
async def packages(
    forge: Forge, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, str]]:
    return await attacks(forge, tmp_path_factory.mktemp("attacks"))


@pytest.fixture(scope="module")
async def genuine_package(forge: Forge, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("genuine")
    return await package(forge, tmp / "genuine.asice", A, await genuine(forge, 2))


async def test_a_genuine_package_is_issued(genuine_package: Path, root_pem: Path) -> None:
    code, report = await verify_json(genuine_package, root_pem)
    assert (code, report["verdict"], report["problems"]) == (0, "issued", [])
    assert report["seal"]["school_id"] == A and report["seal"]["role"] == "school_seal"
    assert {r["verdict"] for r in report["records"].values()} == {"issued"}


@pytest.mark.parametrize(
    "attack",
    [
        "sealed_by_another_school",
        "unsigned_meta_inf_entry",
        "dot_dot_entry",
        "record_listed_twice",
        "another_student",
        "pdf_under_another_id",
        "local_entry_not_in_directory",
        "another_schools_pdf",
    ],
)
async def test_a_forged_package_is_invalid_with_its_code(
    packages: dict[str, tuple[Path, str]], root_pem: Path, attack: str
) -> None:
    path, code = packages[attack]

    exit_code, report = await verify_json(path, root_pem)

    assert exit_code == 1 and report["verdict"] == "invalid"
    assert code in codes(report), report["problems"]


async def test_the_simulator_refuses_every_forged_package_and_takes_the_genuine_one(
    packages: dict[str, tuple[Path, str]],
    genuine_package: Path,
    dev_hsm: DevHsm,
    tmp_path: Path,
) -> None:
    sim = ministry_sim.MinistrySimulator(SecretStr(TOKEN), dev_hsm.trust_roots, tmp_path)
    runner = await ministry_sim.serve(sim, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": MIMETYPE}
    sent = {"genuine": (genuine_package, "")} | packages
    try:
        async with aiohttp.ClientSession() as session:
            receipts = {}
            for name, (path, _) in sent.items():
                async with session.post(
                    f"{url}/v1/packages",
                    data=path.read_bytes(),
                    headers={**headers, "Idempotency-Key": name},
                ) as response:
                    assert response.status == 202
                    receipts[name] = (await response.json())["receipt_id"]
            await sim.wait_until(
                lambda: all(sim.by_receipt[r].status != "received" for r in receipts.values()),
                timeout_s=240,
            )
            answers = {}
            for name, receipt in receipts.items():
                async with session.get(f"{url}/v1/packages/{receipt}", headers=headers) as response:
                    answers[name] = await response.json()
    finally:
        await runner.cleanup()

    assert answers["genuine"]["status"] == "accepted"
    assert answers["genuine"]["accepted_records"] == 2
    for name, (_, code) in packages.items():
        assert answers[name]["status"] == "rejected", name
        assert code in {e["code"] for e in answers[name]["errors"]}, (name, answers[name])


async def test_the_package_check_reads_the_seal_of_a_package_sealed_by_another_school(
    packages: dict[str, tuple[Path, str]], dev_hsm: DevHsm
) -> None:
    path, _ = packages["sealed_by_another_school"]
    report = await asyncio.to_thread(check.check_package, path, dev_hsm.trust_roots)
    assert report.cades is not None and report.cades.school_id == B
    assert [p.code for p in report.problems] == ["seal_school_mismatch"]
