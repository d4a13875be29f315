"""An anchor's timestamp token, checked: over these heads, signed by a TSA we trust."""

from __future__ import annotations

from datetime import datetime

from asn1crypto import cms, x509


class TokenProblem(Exception):
    """Raised when a token is unreadable, not over the digest, or not trusted (internal:
    daemon/audit/verify.py turns it into a break of the report)."""


async def check_token(
    token: cms.ContentInfo, digest: bytes, trust_roots: list[x509.Certificate]
) -> datetime:
    """The token's time, if it is a sound RFC 3161 token over `digest` (SHA-256)."""
    from pyhanko.sign.validation import errors, generic_cms
    from pyhanko_certvalidator import ValidationContext
    from pyhanko_certvalidator.policy_decl import NO_REVOCATION, CertRevTrustPolicy

    # Whether the TSA's certificate was revoked later does not unmake its past tokens.
    context = ValidationContext(
        trust_roots=trust_roots,
        allow_fetching=False,
        revinfo_policy=CertRevTrustPolicy(NO_REVOCATION),
    )

    try:
        signed = token["content"]
        if not isinstance(signed, cms.SignedData):
            raise TokenProblem("the token is not CMS SignedData.")
        status = await generic_cms.validate_tst_signed_data(
            signed,
            context,
            lambda algorithm: digest if algorithm == "sha256" else b"",
        )
    except (ValueError, KeyError, TypeError, errors.SignatureValidationError) as exc:
        raise TokenProblem(f"the token cannot be read or validated ({exc}).") from exc
    if not status.get("intact"):
        raise TokenProblem("the token is not over these heads (its imprint differs).")
    if not status.get("valid"):
        raise TokenProblem("the token's signature is not valid.")
    if status.get("trust_problem_indic") is not None:
        problem = status["trust_problem_indic"]
        raise TokenProblem(f"the TSA's certificate does not chain to a trust root ({problem}).")
    at = status["timestamp"]
    assert isinstance(at, datetime)
    return at
