"""The signer's consent: a compact JWS minted by the school system, checked before any key is used.

Claims: `iss` school_id, `sub` signer_id, `stg` stage, `exp`, and either `rec` + `dig`
(one record, sha256 of the exact version to be signed) or `recs`, a list of
`[record_id, dig]` pairs (batch consent, as a principal approves a whole class).
Each school registers one algorithm: EdDSA (Ed25519 public key) or HS256 (secret).
The header's `alg` must be the registered one, so no algorithm confusion is possible.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from daemon.errors import ConsentExpired, Unauthorized

Alg = Literal["EdDSA", "HS256"]
LEEWAY_S = 60


@dataclass(frozen=True)
class ConsentKey:
    """A school's registered consent verification key (raw Ed25519 public key or secret)."""

    alg: Alg
    key: bytes

    def __repr__(self) -> str:
        return f"ConsentKey(alg={self.alg!r}, key=**********)"


@dataclass(frozen=True)
class Subject:
    """What one signature needs consent for."""

    school_id: str
    signer_id: str
    record_id: str
    stage: str
    digest: str


def verify(token: str, key: ConsentKey, subject: Subject, now: datetime) -> dict[str, Any]:
    """The claims of `token` if it is authentic, current and covers `subject`."""
    header, claims = _verified_parts(token, key)
    if header.get("alg") != key.alg:
        raise Unauthorized(f"Consent algorithm must be {key.alg} for this school.")
    _check_binding(claims, subject)
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise Unauthorized("Consent has no numeric exp claim.")
    if now.timestamp() > exp + LEEWAY_S:
        raise ConsentExpired("Consent expired; ask the signer to approve again.")
    return claims


def mint(claims: dict[str, Any], alg: Alg, private_key: bytes) -> str:
    """A compact JWS over `claims`, as the school system would issue it (dev and tests)."""
    header = _b64(json.dumps({"alg": alg, "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode()
    if alg == "HS256":
        sig = hmac.new(private_key, signing_input, hashlib.sha256).digest()
    else:
        sig = Ed25519PrivateKey.from_private_bytes(private_key).sign(signing_input)
    return f"{header}.{payload}.{_b64(sig)}"


def _verified_parts(token: str, key: ConsentKey) -> tuple[dict[str, Any], dict[str, Any]]:
    parts = token.split(".")
    if len(parts) != 3:
        raise Unauthorized("Consent is not a compact JWS.")
    signing_input = f"{parts[0]}.{parts[1]}".encode()
    signature = _unb64(parts[2])
    if key.alg == "HS256":
        expected = hmac.new(key.key, signing_input, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, signature):
            raise Unauthorized("Consent signature does not verify.")
    elif key.alg == "EdDSA":
        try:
            Ed25519PublicKey.from_public_bytes(key.key).verify(signature, signing_input)
        except InvalidSignature as exc:
            raise Unauthorized("Consent signature does not verify.") from exc
        except ValueError as exc:
            # A registration mistake, not a passing fault: refuse, and say so.
            raise Unauthorized("The school's registered consent key is malformed.") from exc
    else:  # pragma: no cover - the database constrains alg
        raise Unauthorized(f"Unsupported consent algorithm {key.alg!r}.")
    return _json_part(parts[0]), _json_part(parts[1])


def _check_binding(claims: dict[str, Any], subject: Subject) -> None:
    expected = {"iss": subject.school_id, "sub": subject.signer_id, "stg": subject.stage}
    for name, value in expected.items():
        if claims.get(name) != value:
            raise Unauthorized(f"Consent claim {name} does not match the request.")
    if "recs" in claims:
        recs = claims["recs"]
        if not isinstance(recs, list) or [subject.record_id, subject.digest] not in recs:
            raise Unauthorized("Batch consent does not cover this record at this version.")
        return
    if claims.get("rec") != subject.record_id:
        raise Unauthorized("Consent claim rec does not match the request.")
    if claims.get("dig") != subject.digest:
        raise Unauthorized("Consent was given for another version of the document.")


def _json_part(part: str) -> dict[str, Any]:
    try:
        value = json.loads(_unb64(part))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Unauthorized("Consent is not valid JSON.") from exc
    if not isinstance(value, dict):
        raise Unauthorized("Consent header and claims must be JSON objects.")
    return value


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise Unauthorized("Consent is not base64url.") from exc
