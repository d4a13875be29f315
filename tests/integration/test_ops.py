"""The operators' surface on a running daemon: a real scrape passes `promtool check
metrics`, and every metric the dashboards and alert rules use is in it."""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
from pathlib import Path

import aiohttp
import pytest

from daemon import app
from daemon.app import Running
from daemon.settings import Settings
from daemon.stages import ORDER, Stage
from tests.integration.conftest import SchoolSystem
from tests.integration.package_fixtures import fresh_year
from tests.ops.tools import (
    dashboard_queries,
    exists,
    exposed_names,
    referenced_metrics,
    rule_expressions,
    run,
    tool,
)
from tests.services import StatusEvents

SCHOOL = "31000102"


async def _scrape_after_a_flow(
    daemon: Running, school_system: SchoolSystem, status: StatusEvents
) -> str:
    # A record taken through all three stages, and a request refused as undecodable. Its
    # year is the latest any test uses: the gauges cover the two latest years only.
    info, pdf = school_system.new_record(SCHOOL)
    info = info.model_copy(update={"academic_year": fresh_year()})
    digest = hashlib.sha256(pdf).hexdigest()
    sent = await school_system.sign(SCHOOL, info, Stage.HOMEROOM_TEACHER, digest, pdf=pdf)
    event = (await status.wait(sent.request_id))[0]
    for stage in ORDER[1:]:
        assert event["state"] != "rejected", event["reason"]
        sent = await school_system.sign(SCHOOL, info, stage, event["document_sha256"])
        event = (await status.wait(sent.request_id))[0]
    assert event["state"] == "issued"
    bad = await school_system.publish(f"sign.{SCHOOL}", b"{not json", "ops-test-bad")
    assert bad.routing_key
    await daemon.monitor.refresh()
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{daemon.http_port}/metrics"
        async with http.get(url) as response:
            assert response.status == 200
            return await response.text()


def _value(scrape: str, name: str, **labels: str) -> float:
    for line in scrape.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} {labels}")


def _total(scrape: str, name: str, **labels: str) -> float:
    """The sum over every series of `name` with `labels` (any year, round, ...)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in scrape.splitlines()
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items())
    )


async def test_a_scrape_passes_promtool_and_reports_the_flow(
    daemon: Running, school_system: SchoolSystem, status: StatusEvents
) -> None:
    # Given a daemon that signed a record and refused a request
    scrape = await _scrape_after_a_flow(daemon, school_system, status)

    # When promtool lints the scrape
    result = run(tool("promtool"), "check", "metrics", stdin=scrape)

    # Then it finds nothing to complain about
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""
    # And the background gauges show the school's progress, the queues and the HSM
    # (other tests' rosters give the school series of other years and rounds, at zero)
    assert _total(scrape, "hocba_records_issued", school=SCHOOL) >= 1
    assert _total(scrape, "hocba_records", school=SCHOOL, state="issued") >= 1
    assert _value(scrape, "hocba_deadline_timestamp_seconds", round="1") > 0
    assert _value(scrape, "hocba_queue_consumers", queue="hocba.sign") >= 1
    assert _value(scrape, "hocba_signer_certificate_soonest_expiry_timestamp_seconds") > 0
    for dependency in ("broker", "consuming", "database", "hsm"):
        assert _value(scrape, "hocba_dependency_up", dependency=dependency) == 1
    assert _value(scrape, "hocba_hsm_sessions") >= 1
    assert _value(scrape, "hocba_hsm_sessions_in_use") == 0
    # And no label carries a record or student id
    assert not re.search(r'(record|student)(_id)?="', scrape)


async def test_every_metric_of_the_dashboards_and_alerts_exists(
    daemon: Running, school_system: SchoolSystem, status: StatusEvents
) -> None:
    # Given a real scrape
    exposed = exposed_names(await _scrape_after_a_flow(daemon, school_system, status))

    # When the dashboards' and alert rules' metric names are looked up in it
    used = referenced_metrics({**dashboard_queries(), **rule_expressions()})
    missing = {
        where: sorted(n for n in names if not exists(n, exposed))
        for where, names in used.items()
        if any(not exists(n, exposed) for n in names)
    }

    # Then every one exists
    assert missing == {}
    assert sum(len(names) for names in used.values()) > 50


async def test_systemd_hears_ready_watchdog_pings_and_stopping(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given systemd's notify socket, read all along, and a watchdog of 0.2 s
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        monkeypatch.setenv("WATCHDOG_USEC", "200000")
        heard: list[str] = []
        listener = asyncio.create_task(_listen(sock, heard))
        try:
            # When the daemon starts, runs a while and stops
            stop = asyncio.Event()
            async with app.started(settings, stop):
                await asyncio.sleep(0.5)
                stop.set()
            await asyncio.sleep(0.1)
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)

    # Then systemd heard it ready, pinging all along, then stopping
    ready_at = next(i for i, m in enumerate(heard) if m.startswith("READY=1"))
    assert "WATCHDOG=1" in heard[:ready_at] and "WATCHDOG=1" in heard[ready_at:]
    stopping_at = heard.index("STOPPING=1")
    assert stopping_at > ready_at
    assert "STATUS=Consuming" in heard[ready_at]


async def _listen(sock: socket.socket, heard: list[str]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        heard.append((await loop.sock_recv(sock, 4096)).decode())
