"""What the HSM token holds under a signer's key label: its keys and its certificate.

Read in a child process of its own, with one library, one login and one session, as
daemon/dev/pki.py provisions: python-pkcs11 allows one `pkcs11.lib` per process, and
the command that registers signers may run beside anything. For a few labels each is
looked up; for an import of thousands, every key and certificate object is read once
and matched by label, so the token is scanned three times, not three times a line.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

from daemon.errors import ConfigError, HsmUnavailable
from daemon.settings import HsmSettings

# Above this many labels, reading every object once beats a query per label.
SCAN_ABOVE_LABELS = 16


@dataclass(frozen=True)
class KeyObject:
    """A key object under a label: its type, and the RSA public numbers when it has them."""

    key_type: str
    modulus: int | None = None
    public_exponent: int | None = None


@dataclass(frozen=True)
class LabelContents:
    """Every private key, public key and certificate (DER) labelled one label."""

    private_keys: tuple[KeyObject, ...] = ()
    public_keys: tuple[KeyObject, ...] = ()
    certificates: tuple[bytes, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class _ReadJob:
    module: str
    token_label: str
    pin: str = field(repr=False)
    env: dict[str, str]
    labels: tuple[str, ...]


async def read_labels(hsm: HsmSettings, labels: Sequence[str]) -> dict[str, LabelContents]:
    """What the configured token holds under each label (empty contents if nothing)."""
    if not hsm.module.is_file():
        raise ConfigError(f"PKCS#11 module {hsm.module} does not exist.")
    job = _ReadJob(
        str(hsm.module),
        hsm.token_label,
        hsm.resolved_pin().get_secret_value(),
        dict(hsm.env),
        tuple(dict.fromkeys(labels)),
    )
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return await loop.run_in_executor(pool, _read, job)


def _read(job: _ReadJob) -> dict[str, LabelContents]:
    """Runs in the child: open, read, close; PKCS#11 errors become ours here."""
    os.environ.update(job.env)
    import pkcs11
    from pkcs11 import exceptions as p11

    try:
        lib = pkcs11.lib(job.module)
        try:
            token = lib.get_token(token_label=job.token_label)
            with token.open(user_pin=job.pin) as session:
                if len(job.labels) > SCAN_ABOVE_LABELS:
                    return _scan(session, job.labels)
                return {label: _one(session, label) for label in job.labels}
        finally:
            lib.finalize()
    except (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange, p11.PinLocked) as exc:
        raise ConfigError(f"The HSM refused the PIN: {type(exc).__name__}.") from exc
    except p11.NoSuchToken as exc:
        raise ConfigError(f"No token labelled {job.token_label} in the HSM.") from exc
    except p11.PKCS11Error as exc:
        raise HsmUnavailable(f"HSM error while reading keys: {type(exc).__name__}.") from exc


def _one(session: Any, label: str) -> LabelContents:
    from pkcs11 import Attribute, ObjectClass

    def objects(cls: Any) -> list[Any]:
        return list(session.get_objects({Attribute.CLASS: cls, Attribute.LABEL: label}))

    return LabelContents(
        tuple(_key(o) for o in objects(ObjectClass.PRIVATE_KEY)),
        tuple(_key(o) for o in objects(ObjectClass.PUBLIC_KEY)),
        tuple(bytes(o[Attribute.VALUE]) for o in objects(ObjectClass.CERTIFICATE)),
    )


def _scan(session: Any, labels: tuple[str, ...]) -> dict[str, LabelContents]:
    from pkcs11 import Attribute, ObjectClass

    wanted = set(labels)
    found: dict[str, dict[str, list[Any]]] = {
        label: {"private": [], "public": [], "cert": []} for label in labels
    }
    kinds = (
        ("private", ObjectClass.PRIVATE_KEY),
        ("public", ObjectClass.PUBLIC_KEY),
        ("cert", ObjectClass.CERTIFICATE),
    )
    for kind, cls in kinds:
        for obj in session.get_objects({Attribute.CLASS: cls}):
            label = obj[Attribute.LABEL]
            if label not in wanted:
                continue
            value = bytes(obj[Attribute.VALUE]) if kind == "cert" else _key(obj)
            found[label][kind].append(value)
    return {
        label: LabelContents(tuple(f["private"]), tuple(f["public"]), tuple(f["cert"]))
        for label, f in found.items()
    }


def _key(obj: Any) -> KeyObject:
    from pkcs11 import Attribute, KeyType
    from pkcs11 import exceptions as p11

    key_type = obj[Attribute.KEY_TYPE]
    if key_type != KeyType.RSA:
        return KeyObject(getattr(key_type, "name", str(key_type)))
    try:
        modulus = int.from_bytes(obj[Attribute.MODULUS], "big")
        exponent = int.from_bytes(obj[Attribute.PUBLIC_EXPONENT], "big")
    except (p11.AttributeSensitive, p11.AttributeTypeInvalid):
        return KeyObject("RSA")  # a token that hides them: the public key object must tell
    return KeyObject("RSA", modulus, exponent)
