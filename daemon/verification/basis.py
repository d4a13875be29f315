"""The registry as the verdict's basis: look a file's signers up, then judge it again.

Validation is the CPU-bound part (a thread for `verify`, a worker process for
`verify-server`); judging is cheap. So a file is validated and judged by its
certificates first, then, where the verifier has the registry, the certificates it
carries are looked up (daemon.verification.lookup) and the same signatures are judged
again with what the registry says (daemon.verification.verdict.rejudge). A registry
that does not answer leaves the certificates' verdict, with a note saying so.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import TYPE_CHECKING, Protocol

from daemon.database import Database
from daemon.errors import DatabaseUnavailable
from daemon.settings import VerificationSettings
from daemon.verification import lookup
from daemon.verification.report import CheckedRecord
from daemon.verification.verdict import Problem, RecordVerdict, Registry, rejudge

if TYPE_CHECKING:
    from daemon.packaging.check import PackageReport

log = logging.getLogger("hocba_signer.verify")

UNAVAILABLE = "The registry did not answer: the signers are judged by their certificates."


class SignerRegistry(Protocol):
    async def signers(
        self, certificates: list[lookup.CertificateKey], schools: list[str]
    ) -> Registry: ...


class DatabaseSigners:
    """The registry in PostgreSQL, read as the verifier role."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def signers(
        self, certificates: list[lookup.CertificateKey], schools: list[str]
    ) -> Registry:
        return await lookup.signers(self._db, certificates, schools)


async def judged_again(
    source: SignerRegistry, verdicts: dict[str, RecordVerdict], rules: VerificationSettings
) -> dict[str, RecordVerdict]:
    """Each verdict judged again with the registry; with a note if it did not answer."""
    if not verdicts:
        return verdicts
    certificates, schools = lookup.wanted(list(verdicts.values()))
    try:
        registry = await source.signers(certificates, schools)
    except DatabaseUnavailable as exc:
        log.warning("Registry look-up of %d certificates failed: %s", len(certificates),
                    exc.message)  # fmt: skip
        return {
            k: dataclasses.replace(v, notes=(*v.notes, UNAVAILABLE)) for k, v in verdicts.items()
        }
    return {k: rejudge(v, rules, registry) for k, v in verdicts.items()}


async def record(
    source: SignerRegistry, checked: CheckedRecord, rules: VerificationSettings
) -> CheckedRecord:
    if checked.verdict is None:
        return checked
    again = await judged_again(source, {"": checked.verdict}, rules)
    return dataclasses.replace(checked, verdict=again[""])


async def package(
    source: SignerRegistry, checked: PackageReport, rules: VerificationSettings
) -> PackageReport:
    """The package with each record's verdict, and its problems, the registry's."""
    again = await judged_again(source, checked.records, rules)
    return with_verdicts(checked, again)


def with_verdicts(checked: PackageReport, verdicts: dict[str, RecordVerdict]) -> PackageReport:
    """`checked` with its records' verdicts replaced: their problems swapped in its list.

    The package check lists each record's problems as `records/<id>.pdf: <message>`
    (daemon.packaging.check); those of the old verdict go, the new one's are added.
    """
    stale = Counter(
        _listed(record_id, p) for record_id, v in checked.records.items() for p in v.problems
    )
    problems = []
    for p in checked.problems:
        if stale[p]:
            stale[p] -= 1
        else:
            problems.append(p)
    problems += [_listed(record_id, p) for record_id, v in verdicts.items() for p in v.problems]
    return dataclasses.replace(checked, problems=problems, records=dict(verdicts))


def _listed(record_id: str, problem: Problem) -> Problem:
    return Problem(problem.code, f"records/{record_id}.pdf: {problem.message}")
