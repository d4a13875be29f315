"""The signer's consent: a compact JWS minted by the school system, checked before any key is used.

Claims: `iss` school_id, `sub` signer_id, `stg` stage, `exp`, and either `rec` + `dig`
(one record, sha256 of the exact version to be signed) or `recs`, a list of
`[record_id, dig]` pairs (batch consent, as a principal approves a whole class).
Each school registers one algorithm: EdDSA (Ed25519 public key) or HS256 (secret).

The JWS itself (parsing, header, signature) is joserfc's work, not ours. Its registry
is given only the school's registered algorithm, and the key is imported as the type
that algorithm needs, so a token whose header names another algorithm ("none", HS256
keyed with a public key, EdDSA for an HS256 school) is refused before any signature
check. What the claims must say is this service's rule, and is checked here.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    JoseError,
    SecurityWarning,
    UnsupportedAlgorithmError,
)
from joserfc.jwk import OctKey, OKPKey
from joserfc.jws import JWSRegistry

from daemon.errors import ConsentExpired, Unauthorized

Alg = Literal["EdDSA", "HS256"]
LEEWAY_S = 60

# One registry per algorithm: each allows that algorithm and no other. Header fields
# outside the JOSE registry are tolerated, as they always were (`crit` still is obeyed).
_REGISTRIES: dict[str, JWSRegistry] = {
    alg: JWSRegistry(algorithms=[alg], strict_check_header=False) for alg in ("EdDSA", "HS256")
}


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
    claims = _verified_claims(token, key)
    _check_binding(claims, subject)
    _check_current(claims, now)
    return claims


def mint(claims: dict[str, Any], alg: Alg, private_key: bytes) -> str:
    """A compact JWS over `claims`, as the school system would issue it (dev and tests)."""
    signing_key: OctKey | OKPKey
    if alg == "HS256":
        signing_key = OctKey.import_key(private_key)
    else:
        signing_key = OKPKey.import_key(Ed25519PrivateKey.from_private_bytes(private_key))
    with _quiet_about(alg):
        return jwt.encode({"alg": alg}, dict(claims), signing_key, registry=_REGISTRIES[alg])


def _verified_claims(token: str, key: ConsentKey) -> dict[str, Any]:
    """The claims of a token whose signature verifies under `key`, the caller's own.

    A batch consent (`recs`) comes with every record it covers, up to a class's worth
    in one burst; its signature is checked once while it is among the last
    `_BATCHES_KEPT` batch consents seen, and what it must say is checked at every use
    (`verify`). A one-record consent is used once, so it is not kept.
    """
    entry = (token, key)
    with _batches_lock:
        kept = _batches.get(entry)
        if kept is not None:
            _batches.move_to_end(entry)
    if kept is not None:
        return json.loads(kept)  # a fresh copy: no caller can change what the next sees
    claims = _authentic(token, key)
    if "recs" in claims:
        with _batches_lock:
            _batches[entry] = json.dumps(claims)
            while len(_batches) > _BATCHES_KEPT:
                _batches.popitem(last=False)
    return claims


# Batch consents that verified, by token and key (a rotated or retired key is another
# entry), as their claims' JSON; none that failed, so a forged one is checked again
# each time it comes. At most 64 tokens of 16 KB and their claims: ~2 MB.
_BATCHES_KEPT = 64
_batches: OrderedDict[tuple[str, ConsentKey], str] = OrderedDict()
_batches_lock = threading.Lock()


def _authentic(token: str, key: ConsentKey) -> dict[str, Any]:
    if key.alg not in _REGISTRIES:  # pragma: no cover - the database constrains alg
        raise Unauthorized(f"Unsupported consent algorithm {key.alg!r}.")
    verifying_key = _verifying_key(key)
    try:
        with _quiet_about(key.alg):
            decoded = jwt.decode(token, verifying_key, registry=_REGISTRIES[key.alg])
    except JoseError as exc:
        raise Unauthorized(_refusal(exc, key.alg)) from exc
    except TypeError as exc:
        # joserfc (1.8) indexes a header that is valid JSON but not an object.
        raise Unauthorized("Consent header and claims must be JSON objects.") from exc
    return decoded.claims


@lru_cache(maxsize=1024)
def _verifying_key(key: ConsentKey) -> OctKey | OKPKey:
    """The registered key as joserfc's key of the type the school's algorithm needs."""
    try:
        if key.alg == "HS256":
            return OctKey.import_key(key.key)
        return OKPKey.import_key(Ed25519PublicKey.from_public_bytes(key.key))
    except ValueError as exc:
        # A registration mistake, not a passing fault: refuse, and say so.
        raise Unauthorized("The school's registered consent key is malformed.") from exc


def _refusal(exc: JoseError, alg: str) -> str:
    if isinstance(exc, UnsupportedAlgorithmError):  # "none" included: it is not allowed
        return f"Consent algorithm must be {alg} for this school."
    if isinstance(exc, BadSignatureError):
        return "Consent signature does not verify."
    return "Consent is not a well-formed compact JWS."


@contextmanager
def _quiet_about(alg: str) -> Iterator[None]:
    """joserfc warns on each use of "EdDSA"; with the contract's key that warning is moot."""
    if alg != "EdDSA":
        yield
        return
    # RFC 9864 deprecates "EdDSA" only because it may name Ed448 as well; the contract
    # (DESIGN.md) names it, and the only key ever imported for it is an Ed25519 key.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "EdDSA is deprecated", SecurityWarning)
        yield


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


def _check_current(claims: dict[str, Any], now: datetime) -> None:
    """`exp` is a finite number and, with the leeway, not yet passed at `now`."""
    expiry = jwt.JWTClaimsRegistry(
        now=int(now.timestamp()), leeway=LEEWAY_S, exp={"essential": True}
    )
    try:
        # Only exp: iat and nbf were never part of the contract, so they are not judged.
        expiry.validate({"exp": claims.get("exp")})
    except ExpiredTokenError as exc:
        raise ConsentExpired("Consent expired; ask the signer to approve again.") from exc
    except JoseError as exc:
        raise Unauthorized("Consent has no numeric exp claim.") from exc
