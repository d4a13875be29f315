"""Extra signers for refusal and isolation tests: expired, not yet valid, retired, foreign.

Provisioned into the session's dev token and registered in its database; use
`provision_extras(dev_env)` before starting a daemon (its workers read the token then).
"""

from __future__ import annotations

import asyncio

import asyncpg

from daemon.dev import env as devenv
from daemon.dev import pki as devpki
from daemon.stages import Stage

SCHOOL = "31000101"
OTHER = "31000102"
EXPIRED = "GV-EXPIRED"
NOT_YET_VALID = "GV-FUTURE"
RETIRED = "GV-RETIRED"
ONLY_AT_OTHER = "GV-ONLY-OTHER"

SPECS = (
    devpki.SignerSpec(SCHOOL, EXPIRED, Stage.HOMEROOM_TEACHER, "Giao vien het han", expired=True),
    devpki.SignerSpec(
        SCHOOL, NOT_YET_VALID, Stage.HOMEROOM_TEACHER, "Giao vien chua hieu luc", not_yet_valid=True
    ),
    devpki.SignerSpec(SCHOOL, RETIRED, Stage.HOMEROOM_TEACHER, "Giao vien nghi huu"),
    devpki.SignerSpec(OTHER, ONLY_AT_OTHER, Stage.HOMEROOM_TEACHER, "Giao vien truong khac"),
)

_lock = asyncio.Lock()


async def provision_extras(env: devenv.DevEnv) -> None:
    """Idempotent: the extra signers' keys in the token, rows in `signers`, one retired."""
    async with _lock:
        pin = (env.base / "hsm-pin").read_text("utf-8").strip()
        result = await asyncio.to_thread(
            devpki.provision,
            env.base,
            token_label=devenv.TOKEN_LABEL,
            pin=pin,
            schools=[],
            env=env.settings.hsm.env,
            extra_signers=SPECS,
        )
        conn = await asyncpg.connect(env.settings.database.dsn)
        try:
            await devenv.register_signers(conn, devenv.TOKEN_LABEL, result.signers)
            await conn.execute(
                "UPDATE signers SET active = false WHERE school_id = $1 AND signer_id = $2",
                SCHOOL,
                RETIRED,
            )
        finally:
            await conn.close()
