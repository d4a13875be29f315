"""What `timestamp_at` and `revocation` add to a record's check: one core, in-process.

`python -m bench.evidence --roots ROOTS.pem RECORD.pdf ...` times, side by side on each
file, the signatures' validation (daemon.pdf.validation, what every check ran before)
and the evidence pass (daemon.verification.evidence: the timestamp tokens and the
signer's path with the DSS's revocation data), and prints JSON. A file counts only if
its signatures are all intact, valid and trusted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.pdf import validation
from daemon.verification.evidence import evidence_of


def _timed_ms(job: Callable[[], object], rounds: int) -> list[float]:
    job()  # imports and first-call caches are no record's cost
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        job()
        out.append((time.perf_counter() - started) * 1000)
    return out


def measure(pdf: bytes, roots: list[Path], rounds: int) -> dict[str, Any]:
    certs = validation.load_certificates(roots)
    reports = validation.validate_pdf(pdf, certs)
    if not reports or not all(r.intact and r.valid and r.trusted for r in reports):
        raise SystemExit("Not a record whose signatures all validate; not measured.")
    found = evidence_of(pdf, certs)
    validate_ms = _timed_ms(lambda: validation.validate_pdf(pdf, certs), rounds)
    evidence_ms = _timed_ms(lambda: evidence_of(pdf, certs), rounds)
    p50_validate, p50_evidence = statistics.median(validate_ms), statistics.median(evidence_ms)
    return {
        "bytes": len(pdf),
        "signatures": len(reports),
        "timestamped": sum(e.timestamp_at is not None for e in found),
        "revocation": [e.revocation for e in found],
        "rounds": rounds,
        "validate_ms_p50": round(p50_validate, 1),
        "evidence_ms_p50": round(p50_evidence, 1),
        "evidence_share_of_validate": round(p50_evidence / p50_validate, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.evidence", description=__doc__)
    parser.add_argument("records", nargs="+", type=Path)
    parser.add_argument("--roots", type=Path, action="append", required=True)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    doc = {p.name: measure(p.read_bytes(), args.roots, args.rounds) for p in args.records}
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
