"""Who signed, by the registry where the verifier has it: `verify --config` and `verify-server`.

Files are signed with the SoftHSM token's real keys (tests/integration/attack_kit.py);
the registry is a database of its own, migrated for real, read as a login role in
hocba_verifier (so the grant on `signers` is exercised). School A is registered with
its teacher GV-0001 as a *principal* (by the certificate's fingerprint), its principal
and seal (by serial only, as rows made before fingerprints were kept), and without
GV-0002; school B is not registered at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest

from daemon import cli, migrate
from daemon.database import Database
from daemon.dev import env as devenv
from daemon.hsm import SigningPool
from daemon.settings import Settings, SigningSettings, load_settings
from daemon.stages import Stage
from daemon.verification import report as verify
from daemon.verification import server
from tests import services
from tests.hsm_fixtures import SCHOOLS, DevHsm
from tests.integration.attack_kit import Forge, Listed, package, record_pdf

A, B = SCHOOLS


@dataclass
class Registry:
    config: Path  # a configuration naming the registry database and the dev root
    settings: Settings
    root_pem: Path


@dataclass
class Files:
    genuine: Path  # GV-0001, BGH-0001, SEAL of A: GV-0001 is a principal in the registry
    other_teacher: Path  # GV-0002 of A, whom the registry does not know
    foreign: Path  # a genuine record of B, a school the registry does not hold
    package: Path  # a package of A holding `genuine`


@pytest.fixture(scope="module")
async def forge(dev_hsm: DevHsm) -> AsyncIterator[Forge]:
    pool = SigningPool(dev_hsm.settings(workers=1), SigningSettings())
    await pool.start()
    yield Forge(dev_hsm, pool)
    await pool.close()


@pytest.fixture(scope="module")
async def files(forge: Forge, tmp_path_factory: pytest.TempPathFactory) -> Files:
    tmp = tmp_path_factory.mktemp("registry-files")
    genuine = await forge.issued("2025-2026-5A-41", "3100012300041", A)
    keys = [forge.key(A, "GV-0002"), forge.key(A, "BGH-0001"), forge.key(A, "SEAL")]
    other = await forge.sign(record_pdf("2025-2026-5A-42", "3100012300042", A), keys)
    foreign = await forge.issued("2025-2026-5A-43", "3100045600043", B)
    paths = [tmp / "genuine.pdf", tmp / "other.pdf", tmp / "foreign.pdf"]
    for path, pdf in zip(paths, (genuine, other, foreign), strict=True):
        path.write_bytes(pdf)
    listed = [Listed("2025-2026-5A-41", "3100012300041", genuine)]
    sealed = await package(forge, tmp / "a.asice", A, listed)
    return Files(*paths, sealed)


@pytest.fixture(scope="module")
async def registry(
    dev_hsm: DevHsm, files: Files, run_id: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Registry]:
    name, role = f"hocba_test_{run_id}_registry", f"hocba_test_{run_id}_verifier"
    dsn = services.dsn(name)
    root_pem = dev_hsm.base_dir / "pki" / "root.pem"
    await devenv.ensure_database(dsn)
    # GV-0001's certificate by its fingerprint, read from the record it signed.
    checked = await asyncio.to_thread(verify.check_record, files.genuine.read_bytes(), [root_pem])
    assert checked.verdict is not None and checked.verdict.signatures[0].identity is not None
    teacher_sha256 = checked.verdict.signatures[0].identity.cert_sha256
    serials = {(s.school_id, s.signer_id): s.cert_serial for s in dev_hsm.signers}
    conn = await asyncpg.connect(dsn)
    try:
        await migrate.migrate(conn)
        await devenv.ensure_login_role(conn, role, "verifier")
        await devenv.register_school(conn, A, "HS256", b"k" * 32)
        rows = [
            ("GV-0001", Stage.PRINCIPAL, teacher_sha256),
            ("BGH-0001", Stage.PRINCIPAL, None),
            ("SEAL", Stage.SCHOOL_SEAL, None),
        ]
        for signer_id, stage, sha256 in rows:
            await conn.execute(
                """INSERT INTO signers (school_id, signer_id, stage, token_label, key_label,
                                        cert_serial, cert_not_after, cert_sha256)
                   VALUES ($1, $2, $3, 'token', $1 || '/' || $2, $4, now() + interval '1 year',
                           $5)""",
                A,
                signer_id,
                stage.value,
                serials[(A, signer_id)],
                sha256,
            )
    finally:
        await conn.close()
    parts = urlsplit(dsn)
    verifier_dsn = urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rsplit('@', 1)[-1]}"))
    config = tmp_path_factory.mktemp("registry-config") / "hocba-signer.toml"
    config.write_text(
        f'[database]\ndsn = "{dsn}"\nverifier_dsn = "{verifier_dsn}"\n\n'
        f'[signing]\ntrust_roots = ["{root_pem}"]\n'
    )
    yield Registry(config, load_settings(config), root_pem)
    await services.drop_database(name)
    await services.drop_role(role)


async def verify_cli(
    path: Path, *, config: Path | None = None, root: Path | None = None
) -> tuple[int, dict[str, Any]]:
    """`hocba-signer [--config C] verify FILE [--trust-root R] --json`: exit code and report."""
    out = io.StringIO()
    argv = [*(["--config", str(config)] if config else []), "verify", str(path)]
    argv += [*(["--trust-root", str(root)] if root else []), "--json"]

    def run() -> int:
        with contextlib.redirect_stdout(out):
            return cli.main(argv)

    code = await asyncio.to_thread(run)
    return code, json.loads(out.getvalue())


def codes(report: dict[str, Any]) -> set[str]:
    return {p["code"] for p in report["problems"]}


# `hocba-signer verify`


async def test_a_teacher_the_registry_has_as_principal_is_a_role_mismatch(
    registry: Registry, files: Files
) -> None:
    code, report = await verify_cli(files.genuine, config=registry.config)

    assert (code, report["verdict"], report["basis"]) == (1, "invalid", "registry")
    assert codes(report) == {"role_mismatch"}
    gvcn = report["signatures"][0]
    assert (gvcn["role"], gvcn["identified_by"], gvcn["signer_id"]) == (
        "principal",
        "registry",
        "GV-0001",
    )
    assert "the registry has" in report["problems"][0]["message"]
    # The principal and the seal, known by serial only, are the registry's too.
    assert [s["role_ok"] for s in report["signatures"]] == [False, True, True]


async def test_a_certificate_the_registry_does_not_know_is_not_registered(
    registry: Registry, files: Files
) -> None:
    code, report = await verify_cli(files.other_teacher, config=registry.config)

    assert (code, report["verdict"], report["basis"]) == (1, "invalid", "registry")
    assert codes(report) == {"signer_not_registered"}


async def test_the_same_files_without_the_registry_are_issued_by_their_certificates(
    registry: Registry, files: Files
) -> None:
    for path in (files.genuine, files.other_teacher):
        code, report = await verify_cli(path, root=registry.root_pem)
        assert (code, report["verdict"], report["basis"]) == (0, "issued", "certificates")
        assert report["problems"] == []


async def test_a_record_of_a_school_the_registry_lacks_is_judged_by_its_certificates(
    registry: Registry, files: Files
) -> None:
    code, report = await verify_cli(files.foreign, config=registry.config)

    assert (code, report["verdict"], report["basis"]) == (0, "issued", "certificates")
    assert any(f"School {B} is not in this registry" in n for n in report["notes"])


async def test_a_package_is_judged_by_the_registry_record_by_record(
    registry: Registry, files: Files
) -> None:
    code, report = await verify_cli(files.package, config=registry.config)
    assert (code, report["verdict"], report["basis"]) == (1, "invalid", "registry")
    assert codes(report) == {"role_mismatch"}
    assert report["problems"][0]["message"].startswith("records/2025-2026-5A-41.pdf: ")

    code, report = await verify_cli(files.package, root=registry.root_pem)
    assert (code, report["verdict"], report["basis"]) == (0, "issued", "certificates")


async def test_a_registry_that_does_not_answer_leaves_the_certificates_with_a_note(
    registry: Registry, files: Files, tmp_path: Path
) -> None:
    config = tmp_path / "down.toml"
    config.write_text(
        '[database]\ndsn = "postgresql://postgres@127.0.0.1:1/none"\n\n'
        f'[signing]\ntrust_roots = ["{registry.root_pem}"]\n'
    )
    code, report = await verify_cli(files.genuine, config=config)

    assert (code, report["verdict"], report["basis"]) == (0, "issued", "certificates")
    assert any("registry did not answer" in n for n in report["notes"])


# `hocba-signer verify-server`


@pytest.fixture(scope="module")
async def base_url(registry: Registry) -> AsyncIterator[str]:
    settings = registry.settings
    section = settings.verify_server.model_copy(
        update={"workers": 1, "rate_per_minute": 10_000, "rate_burst": 10_000}
    )
    settings = settings.model_copy(update={"verify_server": section})
    checker = server.PoolChecker(settings)
    await checker.start()
    db = Database(settings.database.for_verifier())
    await db.open()
    runner = await server.start(
        server.build_app(section, checker, server.DatabaseRegistry(db)), "127.0.0.1", 0
    )
    yield f"http://127.0.0.1:{server.bound_port(runner)}"
    await runner.cleanup()
    await db.close()
    checker.close()


async def post(url: str, path: Path, content_type: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{url}/v1/verify", data=path.read_bytes(), headers={"Content-Type": content_type}
        ) as r,
    ):
        assert r.status == 200
        return dict(await r.json())


async def test_the_server_judges_by_the_registry(base_url: str, files: Files) -> None:
    genuine = await post(base_url, files.genuine, "application/pdf")
    assert (genuine["verdict"], genuine["basis"], codes(genuine)) == (
        "invalid",
        "registry",
        {"role_mismatch"},
    )
    # The public report says whose word it is, never the signer's id.
    assert genuine["signatures"][0]["identified_by"] == "registry"
    assert "signer_id" not in genuine["signatures"][0]

    unknown = await post(base_url, files.other_teacher, "application/pdf")
    assert (unknown["verdict"], codes(unknown)) == ("invalid", {"signer_not_registered"})

    foreign = await post(base_url, files.foreign, "application/pdf")
    assert (foreign["verdict"], foreign["basis"]) == ("issued", "certificates")

    sealed = await post(base_url, files.package, "application/vnd.etsi.asic-e+zip")
    assert (sealed["verdict"], sealed["basis"]) == ("invalid", "registry")
    assert sealed["records"]["2025-2026-5A-41"]["verdict"] == "invalid"
