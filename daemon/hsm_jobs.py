"""What crosses between the daemon and its HSM worker processes: jobs and results.

Plain frozen dataclasses that pickle; daemon/hsm.py sends the jobs, daemon/hsm_worker.py
answers them. Kept apart from both so that neither carries the other's imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from daemon.stages import Stage


@dataclass(frozen=True)
class SignResult:
    # None: the worker stored the signed PDF itself (`PdfJob.keep`); it did not cross back.
    pdf: bytes | None = field(repr=False)
    size: int
    sha256: str
    input_size: int  # of the version signed (which the worker may have read itself)
    cert_serial: str
    signer_subject: str
    signed_at: datetime
    hsm_seconds: float  # in the token's C_Sign
    worker_seconds: float = 0.0  # the whole signature in the worker, token included


@dataclass(frozen=True)
class Signed:
    """What a worker sends back: only the bytes the signature appended, or none.

    A PAdES signature is an incremental update, so the signed PDF is the input plus
    these bytes; the caller, which still holds the input, joins them. Half the
    pickling and pipe traffic of sending the whole PDF back. A PDF the worker stored
    itself (`PdfJob.keep`) sends back only its digest and size (`update` None).
    """

    update: bytes | None = field(repr=False)
    size: int
    sha256: str
    input_size: int
    cert_serial: str
    signer_subject: str
    signed_at: datetime
    hsm_seconds: float
    worker_seconds: float

    def result(self, original: bytes) -> SignResult:
        return SignResult(
            None if self.update is None else original + self.update,
            self.size,
            self.sha256,
            self.input_size,
            self.cert_serial,
            self.signer_subject,
            self.signed_at,
            self.hsm_seconds,
            self.worker_seconds,
        )


@dataclass(frozen=True)
class WorkerConfig:
    module: str
    token_label: str
    pin: str = field(repr=False)
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Keep:
    """The worker finds and keeps the PDFs in the `fs` store under `root` itself.

    It stores the PDF it signed, durable before it answers (`FsStore.write_now`), and
    the version it signed, `input_sha256`: a new one (a teacher's, in the job) is
    stored first; one already stored (a later stage's) is read from there by its
    digest, checked, and the job carries no bytes. A PDF then crosses the process
    boundary once at most, and the reads, writes and fsyncs (~0.45 ms of CPU a PDF,
    in the main process's threads, contending with its event loop) happen in the
    worker, in turn.
    """

    root: str
    input_sha256: str
    input_is_new: bool


@dataclass(frozen=True)
class PdfJob:
    pdf: bytes = field(repr=False)
    stage: Stage
    key_label: str
    bytes_reserved: int
    unsigned_bytes: int = 0  # room for a signature timestamp added afterwards
    keep: Keep | None = None


@dataclass(frozen=True)
class CmsJob:
    data: bytes = field(repr=False)
    key_label: str
    signing_time: datetime
