"""Fixtures for tests that need a SoftHSM token, the dev PKI and a signing pool.

Import them into a conftest: `from tests.hsm_fixtures import *  # noqa: F403`.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from asn1crypto import x509
from fpdf import FPDF
from pydantic import SecretStr

from daemon.dev.pki import ProvisionedSigner, SignerSpec, provision
from daemon.dev.softhsm import ensure_softhsm_token
from daemon.hsm import KeyRef, SigningPool
from daemon.pdf.validation import load_certificates
from daemon.settings import HsmSettings, SigningSettings
from daemon.stages import Stage

__all__ = [
    "P11KitServer",
    "dev_hsm",
    "homeroom_pdf",
    "p11kit_server",
    "signing_pool",
]

SCHOOLS = ("31000123", "31000456")
EXPIRED_SCHOOL = "31000999"
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
SOFTHSM = Path("/usr/lib/softhsm/libsofthsm2.so")
P11KIT_CLIENT = Path("/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so")


@dataclass(frozen=True)
class DevHsm:
    base_dir: Path
    token_label: str
    pin: str
    env: dict[str, str]
    signers: tuple[ProvisionedSigner, ...]
    trust_roots: list[x509.Certificate]

    def key(self, school_id: str, signer_id: str) -> KeyRef:
        return KeyRef(school_id, self.token_label, f"{school_id}/{signer_id}")

    def stage_key(self, school_id: str, stage: Stage) -> KeyRef:
        signer_id = {
            Stage.HOMEROOM_TEACHER: "GV-0001",
            Stage.PRINCIPAL: "BGH-0001",
            Stage.SCHOOL_SEAL: "SEAL",
        }[stage]
        return self.key(school_id, signer_id)

    def settings(self, workers: int = 2, **overrides: Any) -> HsmSettings:
        values: dict[str, Any] = {
            "module": SOFTHSM,
            "token_label": self.token_label,
            "pin": SecretStr(self.pin),
            "workers": workers,
            "env": self.env,
        }
        values.update(overrides)
        return HsmSettings(**values)


@pytest.fixture(scope="session")
def dev_hsm(tmp_path_factory: pytest.TempPathFactory) -> DevHsm:
    """A token with two schools' signers and one expired signer, and its PKI."""
    base = tmp_path_factory.mktemp("hsm")
    token_label, pin = "hocba-test", "1234"
    env = ensure_softhsm_token(base, token_label, pin, so_pin="5678")
    expired = SignerSpec(
        EXPIRED_SCHOOL, "GV-0001", Stage.HOMEROOM_TEACHER, "Giao vien het han", expired=True
    )
    result = provision(
        base,
        token_label=token_label,
        pin=pin,
        schools=list(SCHOOLS),
        env=env,
        extra_signers=[expired],
    )
    return DevHsm(base, token_label, pin, env, result.signers, load_certificates([result.root_pem]))


@pytest.fixture(scope="session")
def homeroom_pdf() -> bytes:
    pdf = FPDF()
    pdf.add_page()
    pdf.add_font("DejaVu", fname=str(FONT))
    pdf.set_font("DejaVu", size=14)
    pdf.cell(text="Học bạ số — Trường Tiểu học An Hồng")
    return bytes(pdf.output())


@pytest_asyncio.fixture
async def signing_pool(
    dev_hsm: DevHsm,
) -> AsyncIterator[Callable[..., Any]]:
    """Factory: `await signing_pool(workers=2, **hsm_overrides)`; closed after the test."""
    pools: list[SigningPool] = []

    async def make(workers: int = 2, **overrides: Any) -> SigningPool:
        pool = SigningPool(dev_hsm.settings(workers, **overrides), SigningSettings())
        await pool.start()
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


class P11KitServer:
    """`p11-kit server` exporting the test token on a fixed socket path."""

    def __init__(self, dev: DevHsm, socket: Path) -> None:
        self._dev = dev
        self.socket = socket
        self.address = ""
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        self._process = subprocess.Popen(
            [
                "p11-kit", "server", "-f", "-s",
                "--provider", str(SOFTHSM),
                "-n", str(self.socket),
                f"pkcs11:token={self._dev.token_label}",
            ],
            env={**os.environ, **self._dev.env},
            stdout=subprocess.PIPE,
            text=True,
            # The server forks a child per client: stopping it means its group.
            start_new_session=True,
        )  # fmt: skip
        assert self._process.stdout is not None
        # With -s it prints `P11_KIT_SERVER_ADDRESS=...; export ...` once listening.
        for line in self._process.stdout:
            if line.startswith("P11_KIT_SERVER_ADDRESS="):
                self.address = line.split("=", 1)[1].split(";", 1)[0].strip()
                return
        raise RuntimeError("p11-kit server exited without printing its address")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            if process.stdout is not None:
                process.stdout.close()

    def pause(self) -> None:
        """Freeze the server: calls hang instead of failing, as with a stuck HSM."""
        assert self._process is not None
        os.killpg(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        os.killpg(self._process.pid, signal.SIGCONT)

    def hsm_overrides(self) -> dict[str, Any]:
        return {
            "module": P11KIT_CLIENT,
            "env": {"P11_KIT_SERVER_ADDRESS": self.address},
        }


@pytest.fixture
def p11kit_server(dev_hsm: DevHsm, tmp_path: Path) -> Iterator[P11KitServer]:
    server = P11KitServer(dev_hsm, tmp_path / "p11kit.sock")
    server.start()
    yield server
    server.stop()
