"""A school's consent keys: the current one, and rotated-out ones within their grace period.

`consent-key rotate` keeps the previous key valid until `valid_until`, so consents the
school system minted (or still mints, until every one of its instances has the new
key) under the old key keep working. The JWS check itself is daemon/consent.py's; this
module only chooses which keys it is tried with, by the injected clock.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from daemon import consent
from daemon.consent import Alg, ConsentKey
from daemon.errors import ConsentExpired, InvalidMessage, Unauthorized

HS256_MIN_BYTES = 32


@dataclass(frozen=True)
class RetiredKey:
    """A rotated-out consent key; consents under it are accepted until `valid_until`."""

    key: ConsentKey
    valid_until: datetime


def verify(
    token: str,
    current: ConsentKey,
    retired: Sequence[RetiredKey],
    subject: consent.Subject,
    now: datetime,
) -> dict[str, Any]:
    """The consent's claims if it verifies under the current key or a key still in grace."""
    try:
        return consent.verify(token, current, subject, now)
    except Unauthorized:
        for old in retired:
            claims = _under_retired(token, old, subject, now)
            if claims is not None:
                return claims
        raise


def _under_retired(
    token: str, old: RetiredKey, subject: consent.Subject, now: datetime
) -> dict[str, Any] | None:
    """The claims if `old` verifies the consent within its grace; None if it does not."""
    in_grace = now < old.valid_until
    try:
        claims = consent.verify(token, old.key, subject, now)
    except Unauthorized:
        return None
    except ConsentExpired:
        if in_grace:
            raise
    if in_grace:
        return claims
    raise Unauthorized(
        "Consent was signed with a retired consent key whose grace period ended "
        f"at {old.valid_until:%Y-%m-%d %H:%M %z}."
    )


def fingerprint(key: ConsentKey) -> str:
    """A short id for a key, safe to print: never the HS256 secret itself."""
    return hashlib.sha256(key.alg.encode() + b":" + key.key).hexdigest()[:16]


def read_key_file(alg: Alg, path: Path) -> ConsentKey:
    """The verification key the school system handed over.

    EdDSA: its Ed25519 public key, PEM (SubjectPublicKeyInfo) or 64 hex digits.
    HS256: the shared secret, as hex (at least 32 bytes).
    """
    text = path.read_text("utf-8").strip()
    if alg == "HS256":
        secret = _hex(text, path)
        if len(secret) < HS256_MIN_BYTES:
            raise InvalidMessage(f"{path}: an HS256 secret needs at least 32 bytes.")
        return ConsentKey("HS256", secret)
    if text.startswith("-----BEGIN"):
        try:
            public = serialization.load_pem_public_key(text.encode())
        except ValueError as exc:
            raise InvalidMessage(f"{path}: not a PEM public key.") from exc
        if not isinstance(public, Ed25519PublicKey):
            raise InvalidMessage(f"{path}: not an Ed25519 public key.")
        return ConsentKey("EdDSA", public.public_bytes_raw())
    raw = _hex(text, path)
    if len(raw) != 32:
        raise InvalidMessage(f"{path}: an Ed25519 public key is 32 bytes (64 hex digits).")
    return ConsentKey("EdDSA", raw)


def generate_key_file(alg: Alg, path: Path) -> ConsentKey:
    """A new key: the school system's half written to `path` (0600), ours returned.

    EdDSA writes the private key (PEM, PKCS#8); HS256 writes the secret (hex).
    """
    if alg == "HS256":
        secret = secrets.token_bytes(HS256_MIN_BYTES)
        _write_private(path, secret.hex() + "\n")
        return ConsentKey("HS256", secret)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(path, pem.decode())
    return ConsentKey("EdDSA", private.public_key().public_bytes_raw())


def _hex(text: str, path: Path) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise InvalidMessage(f"{path}: expected hex digits.") from exc


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
