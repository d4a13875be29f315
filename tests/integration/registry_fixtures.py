"""A school of its own for registry and roster tests, with keys in the session's dev token.

The dev schools (31000101…) are shared by every integration test; a roster for one of
them would bind its classes for every other test. These tests register a new school
through the registry commands, as an operator would, and provision its keys first.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from daemon.consent import mint
from daemon.dev import env as devenv
from daemon.dev import pki as devpki
from daemon.stages import Stage

TEACHERS = ("GV-0001", "GV-0002")
PRINCIPAL = "BGH-0001"
SEAL = "SEAL"
MISMATCH = "GV-MISMATCH"  # its certificate is GV-0002's: for another key
EXPIRED = "GV-EXPIRED"


@dataclass(frozen=True)
class OwnSchool:
    school_id: str
    key_file: Path  # the school system's Ed25519 private key (PEM)

    def mint(
        self,
        signer: str,
        stage: Stage,
        record_id: str,
        digest: str,
        *,
        key: Path | None = None,
        ttl_s: int = 3600,
    ) -> str:
        """A consent as the school system mints it, with its key (or an older `key`)."""
        pem = (key or self.key_file).read_bytes()
        private = serialization.load_pem_private_key(pem, password=None)
        raw = private.private_bytes(  # type: ignore[union-attr]
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        claims = {"iss": self.school_id, "sub": signer, "stg": stage.value}
        claims |= {"rec": record_id, "dig": digest, "exp": int(time.time()) + ttl_s}
        return mint(claims, "EdDSA", raw)


def new_school_id() -> str:
    return f"39{secrets.randbelow(10**6):06d}"


async def provision_school(env: devenv.DevEnv, school_id: str) -> None:
    """Keys and certificates in the token for the school's signers, and the odd ones."""
    specs = [
        *(devpki.SignerSpec(school_id, t, Stage.HOMEROOM_TEACHER, f"Giao vien {t}")
          for t in TEACHERS),
        devpki.SignerSpec(school_id, PRINCIPAL, Stage.PRINCIPAL, "Hieu truong"),
        devpki.SignerSpec(school_id, SEAL, Stage.SCHOOL_SEAL, f"Truong {school_id}"),
        devpki.SignerSpec(school_id, MISMATCH, Stage.HOMEROOM_TEACHER, "Giao vien lech khoa"),
        devpki.SignerSpec(school_id, EXPIRED, Stage.HOMEROOM_TEACHER, "Giao vien het han",
                          expired=True),
    ]  # fmt: skip
    pin = (env.base / "hsm-pin").read_text("utf-8").strip()
    await asyncio.to_thread(
        devpki.provision,
        env.base,
        token_label=devenv.TOKEN_LABEL,
        pin=pin,
        schools=[],
        env=env.settings.hsm.env,
        extra_signers=specs,
    )
    job = _Swap(
        str(env.settings.hsm.module),
        dict(env.settings.hsm.env),
        devenv.TOKEN_LABEL,
        pin,
        f"{school_id}/{MISMATCH}",
        f"{school_id}/{TEACHERS[1]}",
    )
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        await asyncio.get_running_loop().run_in_executor(pool, _swap_certificate, job)


@dataclass(frozen=True)
class _Swap:
    module: str
    env: dict[str, str]
    token_label: str
    pin: str
    label: str
    from_label: str


def _swap_certificate(job: _Swap) -> None:
    """Runs in a child: the certificate under `label` becomes a copy of `from_label`'s."""
    os.environ.update(job.env)
    import pkcs11
    from pkcs11 import Attribute, CertificateType, ObjectClass

    lib = pkcs11.lib(job.module)
    try:
        token = lib.get_token(token_label=job.token_label)
        with token.open(rw=True, user_pin=job.pin) as session:

            def certs(label: str) -> list[pkcs11.Certificate]:
                query = {Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.LABEL: label}
                return list(session.get_objects(query))

            [source] = certs(job.from_label)
            for cert in certs(job.label):
                cert.destroy()
            session.create_object(
                {
                    Attribute.CLASS: ObjectClass.CERTIFICATE,
                    Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: False,
                    Attribute.LABEL: job.label,
                    Attribute.VALUE: source[Attribute.VALUE],
                    Attribute.SUBJECT: source[Attribute.SUBJECT],
                    Attribute.ISSUER: source[Attribute.ISSUER],
                }
            )
    finally:
        lib.finalize()
