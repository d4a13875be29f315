"""Every error hocba-signer raises, split by what the caller must do.

    HocbaError
    ├── PermanentError            refuse: `rejected` status, dead-letter, never retry
    │   ├── InvalidMessage        invalid_message
    │   ├── UnknownSchool         unknown_school
    │   ├── UnknownSigner         unknown_signer
    │   ├── Unauthorized          unauthorized
    │   ├── ConsentExpired        consent_expired
    │   ├── HashMismatch          hash_mismatch
    │   ├── NotAPdf               not_a_pdf
    │   ├── StageOutOfOrder       stage_out_of_order
    │   ├── AlreadyIssued         already_issued
    │   ├── CertificateInvalid    certificate_invalid
    │   ├── CertificateRevoked    certificate_revoked (OCSP or the CRL says so)
    │   ├── DocumentUnavailable   document_unavailable
    │   ├── RequestIdReused       request_id_reused
    │   ├── DuplicateRecord       duplicate_record (a second live record for a student)
    │   ├── PackageInvalid        package_invalid (a container fails its checks)
    │   └── MinistryRefused       ministry_refused (the ministry answered 4xx: never resend)
    ├── TransientError            retry with capped backoff, then dead-letter
    │   ├── HsmUnavailable        hsm_unavailable
    │   ├── DatabaseUnavailable   database_unavailable
    │   ├── BrokerUnavailable     broker_unavailable
    │   ├── DocumentFetchFailed   document_unavailable (after the last retry)
    │   ├── StoreUnavailable      store_unavailable (unreachable, missing object, disk full)
    │   ├── StoreCorrupt          store_corrupt (an object's bytes do not match its digest)
    │   ├── CertificateStatusUnavailable  certificate_status_unavailable (OCSP and CRL down)
    │   ├── TsaUnavailable        tsa_unavailable (the timestamp authority down or unusable)
    │   ├── ConcurrentUpdate      concurrent_update (another instance won a race)
    │   ├── MinistryUnavailable   ministry_unavailable (down, 5xx, 429, timeout, dropped)
    │   └── InternalError         internal_error (an unexpected exception: a bug)
    └── ConfigError               the configuration cannot work; stop at start-up
        └── ServiceUnusable       service_unusable (a server down, refusing us, or too old)

Foreign exceptions (pkcs11, asyncpg, aio-pika, aiomqtt, aiohttp, OSError) are
translated into these once, at the boundary that calls the foreign library.
"""

from __future__ import annotations


class HocbaError(Exception):
    """Raised when anything in hocba-signer fails; the root of our hierarchy."""

    code: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PermanentError(HocbaError):
    """Raised when a request is refused by the rules; retrying cannot help."""


class InvalidMessage(PermanentError):
    """Raised when a message cannot be decoded or breaks the message contract."""

    code = "invalid_message"

    def __init__(self, message: str, raw: bytes = b"") -> None:
        super().__init__(message)
        self.raw = raw


class UnknownSchool(PermanentError):
    """Raised when the school is not registered with this deployment."""

    code = "unknown_school"


class UnknownSigner(PermanentError):
    """Raised when the signer is not registered for this school."""

    code = "unknown_signer"


class Unauthorized(PermanentError):
    """Raised when the consent is missing, forged, or does not cover this request."""

    code = "unauthorized"


class ConsentExpired(PermanentError):
    """Raised when the consent was valid once but its `exp` has passed."""

    code = "consent_expired"


class HashMismatch(PermanentError):
    """Raised when the document's bytes do not match the announced sha256."""

    code = "hash_mismatch"


class NotAPdf(PermanentError):
    """Raised when the document is not a PDF this service can sign."""

    code = "not_a_pdf"


class StageOutOfOrder(PermanentError):
    """Raised when a stage comes before its predecessor, or after it was applied."""

    code = "stage_out_of_order"


class AlreadyIssued(PermanentError):
    """Raised when a request would change a record that is already issued."""

    code = "already_issued"


class CertificateInvalid(PermanentError):
    """Raised when the signer's certificate is expired, not yet valid or unfit."""

    code = "certificate_invalid"


class CertificateRevoked(PermanentError):
    """Raised when OCSP or the CRL says the signer's certificate is revoked."""

    code = "certificate_revoked"


class DocumentUnavailable(PermanentError):
    """Raised when the referenced document cannot be had, now or after retries."""

    code = "document_unavailable"


class RequestIdReused(PermanentError):
    """Raised when a known request_id arrives with different content."""

    code = "request_id_reused"


class DuplicateRecord(PermanentError):
    """Raised when a new record names a student who already has a live record that round."""

    code = "duplicate_record"


class PackageInvalid(PermanentError):
    """Raised when an ASiC-E container breaks its format, digests or signatures."""

    code = "package_invalid"


class MinistryRefused(PermanentError):
    """Raised when the ministry refuses a submission in a way resending cannot fix."""

    code = "ministry_refused"

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class TransientError(HocbaError):
    """Raised when a dependency failed in a way that a later retry may fix."""

    final_code: str = "transient_failure"

    @property
    def code(self) -> str:  # type: ignore[override]
        return self.final_code


class HsmUnavailable(TransientError):
    """Raised when the HSM, its network or a session fails."""

    final_code = "hsm_unavailable"


class DatabaseUnavailable(TransientError):
    """Raised when PostgreSQL cannot be reached or the transaction failed."""

    final_code = "database_unavailable"


class BrokerUnavailable(TransientError):
    """Raised when RabbitMQ or the MQTT broker cannot take a message."""

    final_code = "broker_unavailable"


class DocumentFetchFailed(TransientError):
    """Raised when fetching a referenced document failed in a retryable way."""

    final_code = "document_unavailable"


class StoreUnavailable(TransientError):
    """Raised when the blob store cannot be reached, write, or find an object."""

    final_code = "store_unavailable"


class StoreCorrupt(TransientError):
    """Raised when a stored object's bytes do not match its digest; they are never served.

    Transient on purpose: the request is not at fault (refusing it would tell the school
    to fix what is ours), a re-read can succeed after a flaky read, and once an operator
    restores the object from a backup a replay of the dead letter succeeds.
    """

    final_code = "store_corrupt"


class CertificateStatusUnavailable(TransientError):
    """Raised when neither the OCSP responder nor the CRL gives a usable answer."""

    final_code = "certificate_status_unavailable"


class TsaUnavailable(TransientError):
    """Raised when the timestamp authority is down, slow or answers no usable token."""

    final_code = "tsa_unavailable"


class ConcurrentUpdate(TransientError):
    """Raised when another instance changed the record between load and store."""

    final_code = "concurrent_update"


class MinistryUnavailable(TransientError):
    """Raised when the ministry endpoint is down, slow, rate-limiting or drops the line."""

    final_code = "ministry_unavailable"

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ConfigError(HocbaError):
    """Raised when the configuration cannot work; the daemon refuses to start."""

    code = "config_error"


class InternalError(TransientError):
    """Raised in place of an unexpected exception, so the message is retried, then dead-lettered."""

    final_code = "internal_error"


class ServiceUnusable(ConfigError):
    """Raised when PostgreSQL, RabbitMQ or the MQTT broker is down, refuses us, or is too old."""

    code = "service_unusable"

    def __init__(self, service: str, address: str, problem: str, fix: str) -> None:
        super().__init__(f"{service} at {address} {problem}: {fix}.")
        self.service = service
        self.address = address
