"""The Prometheus metrics: `hocba_*`, units in names, labels bounded (never record ids)."""

from __future__ import annotations

from importlib import metadata

from prometheus_client import Counter, Gauge, Histogram, Info

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter(
    "hocba_requests",
    "Sign requests handled, by stage, outcome (signed, rejected, duplicate) and reason code.",
    ["stage", "outcome", "reason"],
)
RETRIES = Counter(
    "hocba_retries",
    "Inbound messages sent to a delay queue after a transient failure, by reason code.",
    ["reason"],
)
DEAD_LETTERS = Counter(
    "hocba_dead_letters",
    "Inbound messages dead-lettered by their consumer, by reason code.",
    ["reason"],
)
SIGN_DURATION = Histogram(
    "hocba_sign_duration_seconds",
    "Time from taking a sign request to its outcome being stored, by stage.",
    ["stage"],
    buckets=_LATENCY_BUCKETS_S,
)
HSM_DURATION = Histogram(
    "hocba_hsm_duration_seconds",
    "Time a signature spent in the token's C_Sign (PKCS#11 only, no PDF work), by stage.",
    ["stage"],
    buckets=_LATENCY_BUCKETS_S,
)
IN_FLIGHT = Gauge("hocba_in_flight_requests", "Sign requests being handled right now.")
CONSUMING = Gauge(
    "hocba_consumer_active", "1 while this instance is consuming the sign queue, else 0."
)
OUTBOX_BACKLOG = Gauge(
    "hocba_outbox_backlog_events",
    "Status events stored but not yet published, by transport (amqp, mqtt).",
    ["transport"],
)
STATUS_PUBLISHED = Counter(
    "hocba_status_events_published",
    "Status events published, by transport and state.",
    ["transport", "state"],
)
HSM_BATCH_JOBS = Histogram(
    "hocba_hsm_batch_jobs",
    "Signatures handed to an HSM worker in one round trip (a round of a sign batch).",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128, 256),
)
STATUS_PUBLISH_DELAY = Histogram(
    "hocba_status_publish_delay_seconds",
    "Time from a status event being stored (outbox) to its publication, by transport.",
    ["transport"],
    buckets=_LATENCY_BUCKETS_S,
)
OUTBOX_OLDEST_AGE = Gauge(
    "hocba_outbox_oldest_event_age_seconds",
    "Age of the oldest status event not yet published, by transport (0 when none).",
    ["transport"],
)
QUEUE_MESSAGES = Gauge(
    "hocba_queue_messages",
    "Messages ready in a sign, retry or dead-letter queue, as the broker reports them.",
    ["queue"],
)
QUEUE_CONSUMERS = Gauge(
    "hocba_queue_consumers",
    "Consumers attached to a queue, all instances together, as the broker reports them.",
    ["queue"],
)
DEPENDENCY_UP = Gauge(
    "hocba_dependency_up",
    "1 if the last background check of a dependency (broker, consuming, database, hsm) passed.",
    ["dependency"],
)
HSM_SESSIONS = Gauge("hocba_hsm_sessions", "HSM worker sessions this instance runs.")
HSM_SESSIONS_IN_USE = Gauge(
    "hocba_hsm_sessions_in_use", "HSM worker sessions busy with an operation right now."
)
HSM_ERRORS = Counter(
    "hocba_hsm_errors",
    "HSM operations that failed, by kind (timeout, worker_died, token).",
    ["kind"],
)
RECORDS = Gauge(
    "hocba_records",
    "Records by school, academic year, submission round and state (the two latest years).",
    ["school", "academic_year", "round", "state"],
)
RECORDS_ISSUED = Gauge(
    "hocba_records_issued",
    "Records carrying all three signatures, whatever happened to them since.",
    ["school", "academic_year", "round"],
)
DEADLINE = Gauge(
    "hocba_deadline_timestamp_seconds",
    "Unix time of the ministry deadline of an academic year's submission round.",
    ["academic_year", "round"],
)
CERTS_EXPIRING = Gauge(
    "hocba_signer_certificates_expiring",
    "Active signer certificates of a school that expire within 30 days (or have expired).",
    ["school"],
)
CERT_SOONEST_EXPIRY = Gauge(
    "hocba_signer_certificate_soonest_expiry_timestamp_seconds",
    "Unix time at which the first active signer certificate of a school expires.",
    ["school"],
)
MONITOR_REFRESH = Gauge(
    "hocba_monitor_last_refresh_timestamp_seconds",
    "Unix time the background gauges (records, queues, certificates) were last refreshed.",
)
BUILD = Info("hocba_build", "Version of the running hocba-signer.")


def set_build_info() -> None:
    try:
        version = metadata.version("hocba-signer")
    except metadata.PackageNotFoundError:
        version = "unknown"
    BUILD.info({"version": version})


# --- packages and the ministry -------------------------------------------------

_MINISTRY_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

PACKAGES_BUILT = Counter(
    "hocba_packages_built",
    "ASiC-E packages built and sealed, by submission round.",
    ["round"],
)
PACKAGE_BUILD_DURATION = Histogram(
    "hocba_package_build_duration_seconds",
    "Time to write and seal one package (reading PDFs, CAdES in the HSM, fsync).",
    buckets=_MINISTRY_BUCKETS_S,
)
MINISTRY_ATTEMPTS = Counter(
    "hocba_ministry_requests",
    "Requests to the ministry API, by kind (submit, poll) and outcome "
    "(received, accepted, rejected, pending, lost, retry, refused).",
    ["kind", "outcome"],
)
MINISTRY_LATENCY = Histogram(
    "hocba_ministry_request_duration_seconds",
    "Time for one request to the ministry API, by kind (submit, poll).",
    ["kind"],
    buckets=_MINISTRY_BUCKETS_S,
)
PACKAGES_FINISHED = Counter(
    "hocba_packages_finished",
    "Packages the ministry accepted or rejected, or given up on as its receipt kept "
    "being lost (attention), by school and outcome.",
    ["school", "outcome"],
)
RECORDS_WAITING = Gauge(
    "hocba_records_waiting_for_package",
    "Issued records in no live package yet, by academic year and submission round.",
    ["academic_year", "round"],
)


# --- timestamps and certificate status ----------------------------------------

TSA_DURATION = Histogram(
    "hocba_tsa_request_duration_seconds",
    "Time for one RFC 3161 request to the TSA, by kind (signature, document, anchor).",
    ["kind"],
    buckets=_LATENCY_BUCKETS_S,
)
TSA_ERRORS = Counter(
    "hocba_tsa_errors",
    "Timestamp requests that failed, by kind (unreachable, timeout, refused, invalid).",
    ["kind"],
)
AUDIT_VERIFICATION_OK = Gauge(
    "hocba_audit_last_verification_ok",
    "1 if the last scheduled walk of the audit trail (by any instance) found it whole, else 0.",
)
AUDIT_VERIFICATION_TIME = Gauge(
    "hocba_audit_verification_timestamp_seconds",
    "When the last scheduled walk of the audit trail (by any instance) ended (0: none yet).",
)
STATUS_DURATION = Histogram(
    "hocba_certificate_status_request_duration_seconds",
    "Time for one certificate status request, by source (ocsp, crl).",
    ["source"],
    buckets=_LATENCY_BUCKETS_S,
)
STATUS_ERRORS = Counter(
    "hocba_certificate_status_errors",
    "Certificate status requests that gave no usable answer, by source (ocsp, crl).",
    ["source"],
)
STATUS_LOOKUPS = Counter(
    "hocba_certificate_status_lookups",
    "Certificate status answers used, by where they came from (memory, database, ocsp, crl, "
    "undeclared) and the status (good, revoked).",
    ["origin", "status"],
)
# Every series these alerts read exists from the start, at zero, on every instance.
for _kind in ("unreachable", "timeout", "refused", "invalid"):
    TSA_ERRORS.labels(_kind)
for _kind in ("signature", "document"):
    TSA_DURATION.labels(_kind)
for _source in ("ocsp", "crl"):
    STATUS_ERRORS.labels(_source)
    STATUS_DURATION.labels(_source)
