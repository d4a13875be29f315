import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon import consent
from daemon.errors import ConsentExpired, Unauthorized
from daemon.registry import keyring

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


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _hand_made(header: object, claims: object, signature: bytes = b"") -> str:
    """A token built without the library, as an attacker would."""
    head = _b64(json.dumps(header).encode())
    return f"{head}.{_b64(json.dumps(claims).encode())}.{_b64(signature)}"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_an_unsigned_consent_is_refused_whatever_the_school(keys, alg: str) -> None:
    key, _ = keys
    with pytest.raises(Unauthorized, match=f"must be {key.alg}"):
        consent.verify(_hand_made({"alg": alg, "typ": "JWT"}, _claims()), key, SUBJECT, NOW)


def test_hs256_keyed_with_the_schools_own_public_key_is_refused() -> None:
    # The classic confusion: the attacker knows the public key and uses it as an HMAC secret.
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes_raw()
    key = consent.ConsentKey("EdDSA", public)
    assert consent.verify(
        consent.mint(_claims(), "EdDSA", private.private_bytes_raw()), key, SUBJECT, NOW
    )
    header, payload = _hand_made({"alg": "HS256", "typ": "JWT"}, _claims()).split(".")[:2]
    mac = hmac.new(public, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    with pytest.raises(Unauthorized, match="must be EdDSA"):
        consent.verify(f"{header}.{payload}.{_b64(mac)}", key, SUBJECT, NOW)
    with pytest.raises(Unauthorized, match="must be EdDSA"):
        consent.verify(consent.mint(_claims(), "HS256", public), key, SUBJECT, NOW)


def test_an_eddsa_consent_is_refused_for_a_school_registered_with_hs256() -> None:
    private = Ed25519PrivateKey.generate()
    token = consent.mint(_claims(), "EdDSA", private.private_bytes_raw())
    # Even with the secret set to the very public key that verifies this token.
    for secret in (b"s" * 32, private.public_key().public_bytes_raw()):
        with pytest.raises(Unauthorized, match="must be HS256"):
            consent.verify(token, consent.ConsentKey("HS256", secret), SUBJECT, NOW)


def test_a_payload_changed_after_signing_is_refused(keys) -> None:
    key, private = keys
    header, _, signature = consent.mint(_claims(dig="cd" * 32), key.alg, private).split(".")
    # The signer approved another version; the attacker swaps in the digest of this one.
    payload = _b64(json.dumps(_claims(dig="cd" * 32) | {"dig": "ab" * 32}).encode())
    with pytest.raises(Unauthorized, match="signature does not verify"):
        consent.verify(f"{header}.{payload}.{signature}", key, SUBJECT, NOW)


def test_a_consent_past_its_exp_is_accepted_within_the_leeway_and_refused_after(keys) -> None:
    key, private = keys
    now_s = int(NOW.timestamp())
    within = consent.mint(_claims(exp=now_s - consent.LEEWAY_S + 1), key.alg, private)
    assert consent.verify(within, key, SUBJECT, NOW)["sub"] == "GV-0042"
    after = consent.mint(_claims(exp=now_s - consent.LEEWAY_S - 1), key.alg, private)
    with pytest.raises(ConsentExpired):
        consent.verify(after, key, SUBJECT, NOW)


@pytest.mark.parametrize("exp", [float("inf"), float("nan"), True])
def test_an_exp_that_is_no_point_in_time_is_unauthorized(keys, exp: object) -> None:
    key, private = keys
    with pytest.raises(Unauthorized, match="numeric exp"):
        consent.verify(consent.mint(_claims(exp=exp), key.alg, private), key, SUBJECT, NOW)


def test_an_expired_consent_for_something_else_is_unauthorized_not_expired(keys) -> None:
    key, private = keys
    token = consent.mint(
        _claims(rec="2025-2026-5A-08", exp=int(time.time()) - 3600), key.alg, private
    )
    # Not ConsentExpired (a sibling class): "ask the signer again" would not help here.
    with pytest.raises(Unauthorized, match="claim rec"):
        consent.verify(token, key, SUBJECT, NOW)


def test_a_consent_minted_by_another_school_is_unauthorized(keys) -> None:
    key, _ = keys
    if key.alg == "HS256":
        other = b"o" * 32
    else:
        other = Ed25519PrivateKey.generate().private_bytes_raw()
    # Naming this school as issuer does not help: the other school's key signed it.
    for iss in ("31000999", "31000123"):
        token = consent.mint(_claims(iss=iss), key.alg, other)
        with pytest.raises(Unauthorized):
            consent.verify(token, key, SUBJECT, NOW)


@pytest.mark.parametrize(
    "header",
    ["alg", ["alg"], {"alg": ["HS256"]}, {"alg": None}, {"alg": "HS256", "crit": ["zz"]}],
)
def test_a_malformed_header_is_unauthorized(keys, header: object) -> None:
    key, _ = keys
    with pytest.raises(Unauthorized):
        consent.verify(_hand_made(header, _claims(), b"x" * 64), key, SUBJECT, NOW)


def test_a_malformed_registered_key_is_refused_and_named() -> None:
    with pytest.raises(Unauthorized, match="registered consent key is malformed"):
        consent.verify(
            _hand_made({"alg": "EdDSA"}, _claims()),
            consent.ConsentKey("EdDSA", b"short"),
            SUBJECT,
            NOW,
        )


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The tokens whose JWS joserfc decoded (signature checked), from a cold cache."""
    consent._batches.clear()
    seen: list[str] = []
    decode = consent.jwt.decode

    def counting(token: str, *args: object, **kwargs: object) -> object:
        seen.append(token)
        return decode(token, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(consent.jwt, "decode", counting)
    yield seen
    consent._batches.clear()


def _class_of(n: int, tag: str = "5A") -> list[list[str]]:
    return [[f"2025-2026-{tag}-{i:02d}", f"{i:02x}" * 32] for i in range(n)]


def _batch(key: consent.ConsentKey, private: bytes, recs: list[list[str]]) -> str:
    return consent.mint(_claims(stg="principal", rec=None, dig=None, recs=recs), key.alg, private)


def _principal(record: str, digest: str) -> consent.Subject:
    return consent.Subject("31000123", "GV-0042", record, "principal", digest)


def test_a_batch_consent_is_verified_once_for_its_class_and_bound_at_each_use(
    keys, decodes: list[str]
) -> None:
    key, private = keys
    recs = _class_of(30)
    token = _batch(key, private, recs)
    for record, digest in recs:
        consent.verify(token, key, _principal(record, digest), NOW)
    assert decodes == [token]
    # Still bound at each use: another record, another version, another stage
    for subject in (
        _principal("2025-2026-5A-99", "ab" * 32),
        _principal(recs[0][0], "ff" * 32),
        consent.Subject("31000123", "GV-0042", recs[0][0], "school_seal", recs[0][1]),
    ):
        with pytest.raises(Unauthorized):
            consent.verify(token, key, subject, NOW)
    # and its expiry judged at each use
    later = datetime.fromtimestamp(time.time() + 3600, UTC)
    with pytest.raises(ConsentExpired):
        consent.verify(token, key, _principal(*recs[0]), later)
    assert decodes == [token]


def test_a_one_record_consent_is_not_kept(keys, decodes: list[str]) -> None:
    key, private = keys
    token = consent.mint(_claims(), key.alg, private)
    consent.verify(token, key, SUBJECT, NOW)
    consent.verify(token, key, SUBJECT, NOW)
    assert decodes == [token, token] and not consent._batches


def test_only_the_last_batch_consents_are_kept(keys, decodes: list[str]) -> None:
    key, private = keys
    tokens = [_batch(key, private, _class_of(2, f"{n:02d}")) for n in range(65)]
    for n, token in enumerate(tokens):
        consent.verify(token, key, _principal(*_class_of(2, f"{n:02d}")[0]), NOW)
    consent.verify(tokens[64], key, _principal(*_class_of(2, "64")[1]), NOW)  # kept
    consent.verify(tokens[0], key, _principal(*_class_of(2, "00")[1]), NOW)  # evicted
    assert decodes == [*tokens, tokens[0]]
    assert len(consent._batches) == consent._BATCHES_KEPT


def test_a_token_that_verified_under_one_key_is_checked_again_under_another(
    keys, decodes: list[str]
) -> None:
    key, private = keys
    recs = _class_of(2)
    token = _batch(key, private, recs)
    consent.verify(token, key, _principal(*recs[0]), NOW)
    other = (
        consent.ConsentKey("HS256", b"t" * 32)
        if key.alg == "HS256"
        else consent.ConsentKey(
            "EdDSA", Ed25519PrivateKey.generate().public_key().public_bytes_raw()
        )
    )
    with pytest.raises(Unauthorized, match="does not verify"):
        consent.verify(token, other, _principal(*recs[0]), NOW)
    assert decodes == [token, token]


def test_a_forged_token_is_checked_every_time_it_comes(keys, decodes: list[str]) -> None:
    key, private = keys
    header, payload, signature = _batch(key, private, _class_of(2)).split(".")
    forged = ".".join(
        (header, payload, signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB"))
    )
    for _ in range(3):
        with pytest.raises(Unauthorized):
            consent.verify(forged, key, _principal(*_class_of(2)[0]), NOW)
    assert decodes == [forged] * 3


def test_what_a_caller_does_to_its_claims_changes_nothing_for_the_next(
    keys, decodes: list[str]
) -> None:
    key, private = keys
    recs = _class_of(2)
    token = _batch(key, private, recs)
    claims = consent.verify(token, key, _principal(*recs[0]), NOW)
    claims["sub"] = "someone else"
    claims["recs"].append(["2025-2026-5A-99", "ab" * 32])
    claims = consent.verify(token, key, _principal(*recs[1]), NOW)
    assert claims["sub"] == "GV-0042"
    claims["recs"][0][1] = "ab" * 32
    with pytest.raises(Unauthorized, match="does not cover"):
        consent.verify(token, key, _principal("2025-2026-5A-99", "ab" * 32), NOW)
    with pytest.raises(Unauthorized, match="does not cover"):
        consent.verify(token, key, _principal(recs[0][0], "ab" * 32), NOW)
    assert decodes == [token]


def test_a_kept_consent_under_a_retired_key_ends_with_its_grace(keys, decodes: list[str]) -> None:
    old, private = keys
    current = consent.ConsentKey("HS256", b"n" * 32)
    recs = _class_of(2)
    token = _batch(old, private, recs)
    grace_ends = NOW + timedelta(minutes=5)
    retired = [keyring.RetiredKey(old, grace_ends)]
    keyring.verify(token, current, retired, _principal(*recs[0]), NOW)
    assert (token, old) in consent._batches  # kept, under the retired key
    with pytest.raises(Unauthorized, match="grace period ended"):
        keyring.verify(token, current, retired, _principal(*recs[1]), grace_ends)
