import time
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon import consent
from daemon.errors import ConsentExpired, Unauthorized

SUBJECT = consent.Subject("31000123", "GV-0042", "2025-2026-5A-07", "homeroom_teacher", "ab" * 32)
NOW = datetime.now(UTC)


def _claims(**changes: object) -> dict[str, object]:
    claims: dict[str, object] = {
        "iss": "31000123",
        "sub": "GV-0042",
        "stg": "homeroom_teacher",
        "rec": "2025-2026-5A-07",
        "dig": "ab" * 32,
        "exp": int(time.time()) + 600,
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.fixture(params=["EdDSA", "HS256"])
def keys(request: pytest.FixtureRequest) -> tuple[consent.ConsentKey, bytes]:
    if request.param == "HS256":
        secret = b"s" * 32
        return consent.ConsentKey("HS256", secret), secret
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes_raw()
    return consent.ConsentKey("EdDSA", public), private.private_bytes_raw()


def test_a_consent_that_covers_the_request_verifies(keys) -> None:
    key, private = keys
    token = consent.mint(_claims(), key.alg, private)
    assert consent.verify(token, key, SUBJECT, NOW)["sub"] == "GV-0042"


def test_a_batch_consent_covers_each_listed_record(keys) -> None:
    key, private = keys
    recs = [["2025-2026-5A-06", "cd" * 32], ["2025-2026-5A-07", "ab" * 32]]
    token = consent.mint(_claims(rec=None, dig=None, recs=recs), key.alg, private)
    consent.verify(token, key, SUBJECT, NOW)


@pytest.mark.parametrize(
    "changes",
    [
        {"iss": "31000999"},
        {"sub": "GV-0001"},
        {"stg": "principal"},
        {"rec": "2025-2026-5A-08"},
        {"dig": "cd" * 32},
        {"exp": None},
        {"exp": "tomorrow"},
        {"rec": None, "dig": None, "recs": [["2025-2026-5A-07", "cd" * 32]]},
    ],
)
def test_a_consent_for_anything_else_is_unauthorized(keys, changes) -> None:
    key, private = keys
    token = consent.mint(_claims(**changes), key.alg, private)
    with pytest.raises(Unauthorized):
        consent.verify(token, key, SUBJECT, NOW)


def test_an_expired_consent_is_refused_as_expired(keys) -> None:
    key, private = keys
    token = consent.mint(_claims(exp=int(time.time()) - 3600), key.alg, private)
    with pytest.raises(ConsentExpired):
        consent.verify(token, key, SUBJECT, NOW)


def test_a_forged_signature_is_unauthorized(keys) -> None:
    key, private = keys
    header, payload, _ = consent.mint(_claims(), key.alg, private).split(".")
    forged = consent.mint(_claims(sub="GV-0001"), key.alg, private).split(".")[2]
    with pytest.raises(Unauthorized):
        consent.verify(f"{header}.{payload}.{forged}", key, SUBJECT, NOW)


def test_another_algorithm_than_the_registered_one_is_refused() -> None:
    secret = b"s" * 32
    token = consent.mint(_claims(), "HS256", secret)
    # An attacker who knows an Ed25519 *public* key must not pass it off as an HMAC secret.
    key = consent.ConsentKey("EdDSA", Ed25519PrivateKey.generate().public_key().public_bytes_raw())
    with pytest.raises(Unauthorized):
        consent.verify(token, key, SUBJECT, NOW)


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "!!.??.**", "e30.e30.AAAA"])
def test_garbage_is_unauthorized(keys, token: str) -> None:
    key, _ = keys
    with pytest.raises(Unauthorized):
        consent.verify(token, key, SUBJECT, NOW)


def test_the_key_never_prints() -> None:
    assert "secret" not in repr(consent.ConsentKey("HS256", b"secret"))
