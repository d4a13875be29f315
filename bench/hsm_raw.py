"""The HSM's own limit: C_Sign in a loop, one process per session (see DESIGN pitfalls)."""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

from daemon.settings import HsmSettings

# The size of what the daemon signs: a CMS signed-attributes SET (~240 bytes).
PAYLOAD = bytes(range(240))


def _sign_loop(
    module: str,
    token: str,
    pin: str,
    env: dict[str, str],
    label: str,
    start_at: float,
    duration_s: float,
) -> float:
    os.environ.update(env)
    import pkcs11
    from pkcs11 import Mechanism, ObjectClass

    lib = pkcs11.lib(module)
    session = lib.get_token(token_label=token).open(user_pin=pin)
    key: Any = session.get_key(ObjectClass.PRIVATE_KEY, label=label)
    key.sign(PAYLOAD, mechanism=Mechanism.SHA256_RSA_PKCS)
    while time.time() < start_at:
        time.sleep(0.005)
    # A process that logged in late still measures its own full window.
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < duration_s:
        key.sign(PAYLOAD, mechanism=Mechanism.SHA256_RSA_PKCS)
        count += 1
    rate = count / (time.perf_counter() - began)
    session.close()
    return rate


def measure(
    hsm: HsmSettings, labels: list[str], sessions: int, duration_s: float
) -> dict[str, Any]:
    """Signatures/s of `sessions` processes signing at once, each with its own session."""
    pin = hsm.resolved_pin().get_secret_value()
    ctx = get_context("spawn")
    with ProcessPoolExecutor(sessions, mp_context=ctx) as pool:
        start_at = time.time() + 2.5  # time for every process to start and log in
        futures = [
            pool.submit(
                _sign_loop,
                str(hsm.module),
                hsm.token_label,
                pin,
                dict(hsm.env),
                labels[n % len(labels)],
                start_at,
                duration_s,
            )
            for n in range(sessions)
        ]
        rates = [f.result() for f in futures]
    return {
        "sessions": sessions,
        "duration_s": duration_s,
        "signatures_per_s": round(sum(rates), 1),
        "per_session": [round(r, 1) for r in rates],
    }
