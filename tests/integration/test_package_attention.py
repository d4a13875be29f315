"""A package in `attention` and the operator: resumed, rejected, or refused, by command."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from daemon import cli
from daemon.app import Running
from daemon.commands import package_actions as package_cli
from daemon.commands import packages as package_commands
from daemon.dev import env as devenv
from daemon.errors import HocbaError
from daemon.packaging import packages
from daemon.packaging.packages import Package, PackageState
from daemon.settings import Settings
from tests.integration.conftest import SchoolSystem
from tests.integration.package_fixtures import *  # noqa: F403
from tests.integration.package_fixtures import (
    Ministry,
    Packaging,
    fresh_year,
    issue,
    states_of,
    told_each_state_once,
)
from tests.services import StatusEvents

SCHOOL = "31000103"
# Two resends allowed: the third lost receipt stops the package.
RESENDS = 2


@dataclass
class Stuck:
    sim: Ministry
    pkg: Packaging
    package: Package
    year: str
    record_ids: set[str]


async def stuck(
    school_system: SchoolSystem, status: StatusEvents, ministry: Any, packaging: Any, count: int
) -> Stuck:
    """A package of `count` records stopped in attention: its receipt lost three times."""
    year = fresh_year()
    infos = await issue(school_system, status, SCHOOL, year, count)
    sim: Ministry = await ministry(forget_receipts=RESENDS + 1)
    pkg: Packaging = packaging(sim, max_receipt_resends=RESENDS)
    built = await pkg.runner.package(SCHOOL, year, 1, submit=False)
    assert built is not None
    package = await pkg.submitter.follow(built)
    assert package.state is PackageState.ATTENTION
    return Stuck(sim, pkg, package, year, {i.record_id for i in infos})


def lose_one_more(sim: Ministry) -> None:
    """The ministry will lose the next receipt polled too, then keep them."""
    faults = sim.sim.faults
    sim.sim.faults = dataclasses.replace(faults, forget_receipts=faults.forget_receipts + 1)


async def history(running: Running, package: Package) -> list[tuple[str, str]]:
    async with running.db.connection() as conn:
        rows = await conn.fetch(
            "SELECT kind, outcome FROM submission_attempts WHERE package_id = $1 ORDER BY id",
            package.package_id,
        )
    return [(r["kind"], r["outcome"]) for r in rows]


async def audited(running: Running, package: Package) -> list[tuple[str, dict[str, Any]]]:
    async with running.db.connection() as conn:
        rows = await conn.fetch(
            "SELECT action, detail FROM audit_log WHERE record_id IS NULL "
            "AND detail->>'package_id' = $1 ORDER BY id",
            str(package.package_id),
        )
    return [(r["action"], json.loads(r["detail"])) for r in rows]


async def command(*argv: str) -> int:
    """`hocba-signer ARGV` as an operator types it (its own event loop, in a thread)."""
    return await asyncio.to_thread(cli.main, list(argv))


@pytest.fixture
def config(dev_env: devenv.DevEnv, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test database's configuration file; `--config` leaves HOCBA_CONFIG as it was."""
    monkeypatch.setenv("HOCBA_CONFIG", str(dev_env.config_path))
    return str(dev_env.config_path)


async def test_a_resumed_package_is_sent_again_and_may_lose_its_receipt_again(
    daemon: Running,
    school_system: SchoolSystem,
    status: StatusEvents,
    ministry,
    packaging,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a package in attention, and a ministry that will lose its receipt once more
    given = await stuck(school_system, status, ministry, packaging, 2)
    lose_one_more(given.sim)
    lost_before = [a for a in await history(daemon, given.package) if a[1] != "pending"]

    # When an operator resumes it and follows it (`package-resume ID --follow`)
    cli_settings = settings.model_copy(
        update={"ministry": given.sim.settings(max_receipt_resends=RESENDS)}
    )
    with caplog.at_level(logging.WARNING, logger="daemon.commands.package_actions"):
        shown = await package_cli.resume(
            cli_settings, given.package.package_id, "The ministry has nothing.", follow=True
        )

    # Then it was sent again under its key, lost once more, resent, and accepted
    assert shown["state"] == "accepted" and shown["package_id"] == str(given.package.package_id)
    after = [a for a in await history(daemon, given.package) if a[1] != "pending"]
    assert after[len(lost_before) :] == [
        ("operator", "resumed"),
        ("submit", "received"),
        ("poll", "lost"),
        ("submit", "received"),
        ("poll", "accepted"),
    ]
    assert [r.key for r in given.sim.sim.by_key.values()] == [str(given.package.package_id)]
    assert shown["receipt_id"] == given.sim.sim.by_key[str(given.package.package_id)].receipt_id
    # And every record was told each state once (no second `submitted`)
    await told_each_state_once(status, given.record_ids)
    # And the operator's action is in the audit trail and the log, with the package id only
    [(action, detail)] = await audited(daemon, given.package)
    assert action == "package_resumed_by_operator"
    assert detail["from"] == "attention" and detail["to"] == "submitting"
    assert detail["reason"] == "The ministry has nothing."
    warned = [r.getMessage() for r in caplog.records if r.name == "daemon.commands.package_actions"]
    assert warned == [
        f"Package {given.package.package_id} resumed by an operator: back to submitting "
        "under the same Idempotency-Key."
    ]


async def test_two_operators_resuming_at_once_resume_it_once(
    daemon: Running,
    school_system: SchoolSystem,
    status: StatusEvents,
    ministry,
    packaging,
) -> None:
    # Given a package in attention
    given = await stuck(school_system, status, ministry, packaging, 1)

    # When two operators resume it at the same moment
    results = await asyncio.gather(
        package_cli.resume_package(daemon.db, given.package.package_id, "first"),
        package_cli.resume_package(daemon.db, given.package.package_id, "second"),
        return_exceptions=True,
    )

    # Then one did, and the other was refused
    resumed = [r for r in results if isinstance(r, Package)]
    refused = [r for r in results if isinstance(r, HocbaError)]
    assert len(resumed) == 1 and len(refused) == 1, results
    assert resumed[0].state is PackageState.SUBMITTING
    assert (await history(daemon, given.package)).count(("operator", "resumed")) == 1
    # And the daemon's package runner would resume it; followed, it is accepted
    async with daemon.db.connection() as conn:
        unfinished = await packages.unfinished(conn)
    assert given.package.package_id in {p.package_id for p in unfinished}
    final = await given.pkg.submitter.follow(resumed[0])
    assert final.state is PackageState.ACCEPTED


async def test_a_rejected_package_releases_its_records_into_the_next_package(
    daemon: Running,
    school_system: SchoolSystem,
    status: StatusEvents,
    ministry,
    packaging,
    config: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a package of two records in attention
    given = await stuck(school_system, status, ministry, packaging, 2)
    package_id = str(given.package.package_id)
    capsys.readouterr()

    # When an operator rejects it (`package-reject ID --reason …`)
    reason = "The ministry will not take this package; rebuild it."
    code = await command(
        "--config", config, "package-reject", package_id, "--reason", reason, "--json"
    )

    # Then it is rejected, shown as JSON
    assert code == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["package_id"] == package_id and shown["state"] == "rejected"
    # And every record is told rejected_by_ministry with the operator's reason
    events = await status.wait_until(
        lambda evs: all(
            "rejected_by_ministry" in s for s in states_of(evs, given.record_ids).values()
        )
    )
    told = states_of(events, given.record_ids)
    assert all(s == ["packaged", "submitted", "rejected_by_ministry"] for s in told.values())
    rejected = [
        e
        for e in events
        if e["record_id"] in given.record_ids and e["state"] == "rejected_by_ministry"
    ]
    assert {(e["reason"]["code"], e["reason"]["message"]) for e in rejected} == {
        (package_cli.OPERATOR_REJECTED, reason)
    }
    assert [a for a, _ in await audited(daemon, given.package)] == ["package_rejected_by_operator"]
    assert (await history(daemon, given.package))[-1] == ("operator", "rejected")
    # And the next `package` run puts the records into a new package, which is accepted
    given.sim.sim.faults = type(given.sim.sim.faults)()
    again = await given.pkg.runner.package(SCHOOL, given.year, 1, submit=False)
    assert again is not None and again.sequence == 2 and again.record_count == 2
    assert (await given.pkg.submitter.follow(again)).state is PackageState.ACCEPTED
    async with daemon.db.connection() as conn:
        moved = await conn.fetch(
            "SELECT record_id FROM package_records WHERE package_id = $1", again.package_id
        )
    assert {r["record_id"] for r in moved} == given.record_ids


async def test_only_a_package_in_attention_is_resumed_or_rejected(
    daemon: Running,
    school_system: SchoolSystem,
    status: StatusEvents,
    ministry,
    packaging,
    config: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a package an operator already rejected, and an id no package has
    given = await stuck(school_system, status, ministry, packaging, 1)
    package_id = str(given.package.package_id)
    await package_cli.reject_package(daemon.db, given.package.package_id, "Rebuild it.")
    unknown = str(uuid.uuid4())
    capsys.readouterr()

    # When an operator resumes or rejects them
    codes = [
        await command("--config", config, "package-resume", package_id, "--follow"),
        await command("--config", config, "package-reject", package_id, "--reason", "Again."),
        await command("--config", config, "package-resume", unknown),
    ]

    # Then each is refused with one line, and the package is as it was
    assert codes == [2, 2, 2]
    assert capsys.readouterr().err.splitlines() == [
        f"hocba-signer: Package {package_id} is rejected: only a package in attention "
        "can be resumed.",
        f"hocba-signer: Package {package_id} is rejected: only a package in attention "
        "can be rejected.",
        f"hocba-signer: No package {unknown}.",
    ]
    async with daemon.db.connection() as conn:
        assert (await packages.get(conn, given.package.package_id)).state is PackageState.REJECTED
    assert (await history(daemon, given.package))[-1] == ("operator", "rejected")
    with pytest.raises(HocbaError, match="reason"):
        await package_cli.reject_package(daemon.db, given.package.package_id, "  ")


async def test_packages_in_attention_are_listed_by_command(
    daemon: Running,
    school_system: SchoolSystem,
    status: StatusEvents,
    ministry,
    packaging,
    config: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    given = await stuck(school_system, status, ministry, packaging, 1)
    capsys.readouterr()

    code = await command("--config", config, "package-list", "--school", SCHOOL, "--json")

    assert code == 0
    listed = json.loads(capsys.readouterr().out)["packages"]
    assert str(given.package.package_id) in {p["package_id"] for p in listed}
    assert {p["state"] for p in listed} == {"attention"}
    await package_cli.reject_package(daemon.db, given.package.package_id, "Tidy up.")


def test_the_package_commands_parse_beside_the_existing_one() -> None:
    parser = cli.parser()
    package_id = uuid.uuid4()

    made = parser.parse_args(
        ["package", "--school", SCHOOL, "--year", "2025-2026", "--round", "1", "--submit"]
    )
    assert (made.handler, made.school, made.round, made.submit) == (
        package_commands._package,
        SCHOOL,
        1,
        True,
    )
    resumed = parser.parse_args(["package-resume", str(package_id), "--follow"])
    assert (resumed.handler, resumed.package_id, resumed.follow, resumed.reason) == (
        package_commands._package_resume,
        package_id,
        True,
        None,
    )
    rejected = parser.parse_args(["package-reject", str(package_id), "--reason", "Rebuild."])
    assert (rejected.handler, rejected.package_id, rejected.reason) == (
        package_commands._package_reject,
        package_id,
        "Rebuild.",
    )
    listed = parser.parse_args(["package-list"])
    assert (listed.handler, listed.state, listed.school) == (
        package_commands._package_list,
        "attention",
        None,
    )
    assert {s.value for s in PackageState} == set(
        next(a for a in _subparser(parser, "package-list")._actions if a.dest == "state").choices
    )
    for wrong in (["package-reject", str(package_id)], ["package-resume", "not-a-uuid"]):
        with pytest.raises(SystemExit) as exited:
            parser.parse_args(wrong)
        assert exited.value.code == 2


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]
