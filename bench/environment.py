"""An isolated bench environment: its own token, PKI, database, vhost and MQTT prefix.

Everything lives under one temporary folder and is named after one run tag, so a
bench never touches the dev database, the tests' vhosts or anyone's retained status.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import secrets
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from asn1crypto import x509

from daemon.dev import env as devenv
from daemon.hsm import KeyRef
from daemon.messages import RecordInfo
from daemon.pdf import validation
from daemon.stages import Stage
from producers.school_system import sample_pdf, sample_record
from tests.services import create_vhost, delete_vhost, drop_database

PG = "postgresql://postgres@127.0.0.1:5432"
TOKEN_DIR = Path("var/bench").resolve()
# The dev OCSP, CRL and TSA (bench/pki_server.py): the certificates name this port.
PKI_SERVICES_PORT = 9477


@dataclass(frozen=True)
class BenchEnv:
    tag: str
    dev: devenv.DevEnv
    db_name: str
    vhost: str
    amqp_url: str
    mqtt_prefix: str

    @property
    def trust_roots(self) -> list[x509.Certificate]:
        return validation.load_certificates(self.dev.settings.signing.trust_roots)

    def key(self, school: str, stage: Stage) -> KeyRef:
        signer = self.dev.signer_for(school, stage.value)
        return KeyRef(school, self.dev.settings.hsm.token_label, f"{school}/{signer}")


@dataclass(frozen=True)
class Sample:
    school: str
    info: RecordInfo
    pdf: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.pdf).hexdigest()


@contextlib.asynccontextmanager
async def bench_env(schools: int) -> AsyncIterator[BenchEnv]:
    """Provision a fresh environment; drop its database and vhost afterwards."""
    tag = secrets.token_hex(3)
    base = TOKEN_DIR / f"schools-{schools}-pki"
    db_name, vhost = f"hocba_bench_{tag}", f"hocba-bench-{tag}"
    amqp_url = await asyncio.to_thread(create_vhost, vhost)
    try:
        # The token and PKI (key generation is slow) are kept between runs; the
        # configuration names this run's database and vhost, the store starts empty.
        await asyncio.to_thread(_fresh_run_files, base)
        dev = await devenv.init(
            base, schools, dsn=f"{PG}/{db_name}", amqp_url=amqp_url, services_port=PKI_SERVICES_PORT
        )
        yield BenchEnv(tag, dev, db_name, vhost, amqp_url, f"hocba-bench-{tag}")
    finally:
        await drop_database(db_name)
        await asyncio.to_thread(delete_vhost, vhost)
        await asyncio.to_thread(_fresh_run_files, base)


def _fresh_run_files(base: Path) -> None:
    (base / devenv.CONFIG_NAME).unlink(missing_ok=True)
    shutil.rmtree(base / "documents", ignore_errors=True)
    for log in base.glob("bench-*.log"):
        log.unlink()


def samples(schools: tuple[str, ...], count: int, tag: str) -> list[Sample]:
    """Realistic records: 3-5 pages of Vietnamese text and a photo, 60-190 KB each."""
    rng = random.Random(tag)
    out = []
    for n in range(count):
        school = schools[n % len(schools)]
        info = sample_record(rng, school, tag, n)
        pdf = sample_pdf(
            info,
            f"Trường Tiểu học {school}",
            pages=rng.randint(3, 5),
            photo_px=rng.randint(110, 220),
        )
        out.append(Sample(school, info, pdf))
    return out
