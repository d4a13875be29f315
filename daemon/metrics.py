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
    "Sign requests sent back for a delayed retry after a transient failure, by reason code.",
    ["reason"],
)
DEAD_LETTERS = Counter(
    "hocba_dead_letters",
    "Sign requests dead-lettered, by reason code.",
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
    "Time a signature spent in the HSM worker (PDF preparation and PKCS#11), by stage.",
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
BUILD = Info("hocba_build", "Version of the running hocba-signer.")


def set_build_info() -> None:
    try:
        version = metadata.version("hocba-signer")
    except metadata.PackageNotFoundError:
        version = "unknown"
    BUILD.info({"version": version})
