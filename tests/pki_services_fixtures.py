"""Fixtures for tests of signature levels: a token whose certificates name the dev PKI
services (OCSP, CRL, TSA), and those services running on loopback on a port of their own.

Import them into a test module: `from tests.pki_services_fixtures import *  # noqa: F403`.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from daemon.dev import pki_services
from daemon.dev.pki import SignerSpec, provision
from daemon.dev.softhsm import ensure_softhsm_token
from daemon.hsm import KeyRef, SigningPool, SignJob
from daemon.ltv.levels import LeveledSigning
from daemon.ltv.status import CertificateStatus, Fetch, Found, StatusAnswer
from daemon.ltv.timestamps import TsaClient
from daemon.pdf.validation import load_certificates
from daemon.settings import SigningSettings
from daemon.stages import ORDER, Stage
from tests.hsm_fixtures import DevHsm

__all__ = ["MemoryStatusCache", "ServicedHsm", "serviced_hsm", "status_checker"]

SERVICED_SCHOOL = "31000777"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class ServicedHsm:
    dev: DevHsm
    running: pki_services.Running
    tsa_pem: str

    @property
    def services(self) -> pki_services.ServicesConfig:
        return self.running.config

    @property
    def pki(self) -> Path:
        return self.dev.base_dir / "pki"

    def signing(self, level: str = "B-LTA", **overrides: object) -> SigningSettings:
        values: dict[str, object] = {"level": level, "tsa_url": self.services.tsa_url}
        values.update(overrides)
        return SigningSettings(**values)  # type: ignore[arg-type]

    def serial(self, signer_id: str) -> str:
        return next(s.cert_serial for s in self.dev.signers if s.signer_id == signer_id)

    async def issue(
        self,
        pdf: bytes,
        settings: SigningSettings,
        session: aiohttp.ClientSession,
        status: CertificateStatus,
        *,
        keys: dict[Stage, KeyRef] | None = None,
        stages: tuple[Stage, ...] = ORDER,
    ) -> bytes:
        """`pdf` signed stage after stage at `settings.level` by the school's signers (or
        `keys`), through the levels and a one-worker pool of its own, as the daemon signs."""
        pool = SigningPool(self.dev.settings(1), settings)
        await pool.start()
        try:
            tsa = TsaClient(session, settings) if settings.timestamped else None
            signing = LeveledSigning(pool, status, tsa, settings.level, self.dev.trust_roots)
            for stage in stages:
                key = (keys or {}).get(stage) or self.dev.stage_key(SERVICED_SCHOOL, stage)
                pdf = (await signing.sign(SignJob(pdf, stage, key))).pdf
        finally:
            await pool.close()
        return pdf


@pytest_asyncio.fixture(scope="session")
async def serviced_hsm(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ServicedHsm]:
    """A token of one school whose certificates point at running dev PKI services."""
    base = tmp_path_factory.mktemp("serviced")
    token_label, pin = "hocba-serviced", "1234"
    env = ensure_softhsm_token(base, token_label, pin, so_pin="5678")
    config = pki_services.configure(base / "pki", free_port(), validity_s=3600)
    spare = [
        SignerSpec(SERVICED_SCHOOL, f"GV-09{n:02d}", Stage.HOMEROOM_TEACHER, f"Giao vien 09{n:02d}")
        for n in range(1, 4)
    ]
    result = provision(
        base,
        token_label=token_label,
        pin=pin,
        schools=[SERVICED_SCHOOL],
        env=env,
        extra_signers=spare,
    )
    tsa_pem = pki_services.ensure_tsa(base / "pki")
    dev = DevHsm(base, token_label, pin, env, result.signers, load_certificates([result.root_pem]))
    assert config.port
    async with pki_services.running(base / "pki") as running:
        yield ServicedHsm(dev, running, str(tsa_pem))


class MemoryStatusCache:
    """The status cache as a dict: what the database table keeps, for one process."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], StatusAnswer] = {}

    async def load(self, issuer: str, serial: str, now: datetime) -> StatusAnswer | None:
        row = self.rows.get((issuer, serial))
        return row if row is not None and row.next_update > now else None

    async def refresh(self, issuer: str, serial: str, now: datetime, fetch: Fetch) -> Found:
        answer = await fetch()
        self.rows[(issuer, serial)] = answer
        return Found(answer, "fetched")


@pytest_asyncio.fixture
async def status_checker() -> AsyncIterator[tuple[aiohttp.ClientSession, MemoryStatusCache]]:
    async with aiohttp.ClientSession() as session:
        yield session, MemoryStatusCache()
