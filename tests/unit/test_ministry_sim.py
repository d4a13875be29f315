"""The ministry simulator keeps its receipts across restarts, and can forget them on purpose."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr

from daemon.dev import ministry_sim
from daemon.packaging.container import MIMETYPE

TOKEN = "sim-unit-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextlib.asynccontextmanager
async def simulator(
    store: Path, **faults: Any
) -> AsyncIterator[tuple[ministry_sim.MinistrySimulator, str]]:
    sim = ministry_sim.MinistrySimulator(
        SecretStr(TOKEN), [], store, ministry_sim.Faults(seed=1, **faults)
    )
    runner = await ministry_sim.serve(sim, "127.0.0.1", 0)
    try:
        yield sim, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def post(session: aiohttp.ClientSession, url: str, key: str, body: bytes) -> Any:
    headers = {**AUTH, "Content-Type": MIMETYPE, "Idempotency-Key": key}
    async with session.post(f"{url}/v1/packages", data=body, headers=headers) as response:
        return response.status, await response.json()


async def get(session: aiohttp.ClientSession, url: str, receipt_id: str) -> Any:
    async with session.get(f"{url}/v1/packages/{receipt_id}", headers=AUTH) as response:
        return response.status, await response.json()


def checked(sim: ministry_sim.MinistrySimulator, receipt_id: str) -> bool:
    received = sim.by_receipt.get(receipt_id)
    return received is not None and received.status != "received"


async def test_a_restarted_simulator_gives_the_same_receipt_for_the_same_key(
    tmp_path: Path,
) -> None:
    body = b"not a zip, so the check rejects it"
    async with aiohttp.ClientSession() as session:
        # Given a package received and checked by a simulator
        async with simulator(tmp_path) as (sim, url):
            status, first = await post(session, url, "key-1", body)
            assert status == 202
            receipt_id = first["receipt_id"]
            await sim.wait_until(lambda: checked(sim, receipt_id), timeout_s=30)
            status, before = await get(session, url, receipt_id)
            assert status == 200 and before["status"] == "rejected"
        stored = json.loads((tmp_path / f"{receipt_id}.receipt.json").read_text("utf-8"))
        assert stored["idempotency_key"] == "key-1" and stored["status"] == "rejected"
        assert not list(tmp_path.glob(".*.tmp"))

        # When the simulator restarts on the same directory
        async with simulator(tmp_path) as (sim, url):
            # Then the old receipt is known, with its answer
            status, after = await get(session, url, receipt_id)
            assert (status, after) == (200, before)
            # And the same key gets the same receipt, not a second package
            status, again = await post(session, url, "key-1", body)
            assert (status, again["receipt_id"]) == (202, receipt_id)
            assert list(sim.by_receipt) == [receipt_id]
            assert len(list(tmp_path.glob("*.asice"))) == 1
            # And a different body under that key is still refused
            status, _ = await post(session, url, "key-1", body + b"!")
            assert status == 409


async def test_a_package_unchecked_at_a_restart_is_checked_after_it(tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        async with simulator(tmp_path) as (sim, url):
            _, first = await post(session, url, "key-2", b"garbage")
        receipt_id = first["receipt_id"]
        # As if the simulator had stopped before the check ended
        file = tmp_path / f"{receipt_id}.receipt.json"
        data = json.loads(file.read_text("utf-8"))
        file.write_text(json.dumps({**data, "status": "received", "errors": []}), "utf-8")
        async with simulator(tmp_path) as (sim, url):
            await sim.wait_until(lambda: checked(sim, receipt_id), timeout_s=30)
            status, answer = await get(session, url, receipt_id)
            assert status == 200 and answer["status"] == "rejected"


async def test_forgotten_receipts_are_404_and_their_key_starts_afresh(tmp_path: Path) -> None:
    async with (
        aiohttp.ClientSession() as session,
        simulator(tmp_path, forget_receipts=1) as sim_url,
    ):
        sim, url = sim_url
        _, first = await post(session, url, "key-3", b"garbage")
        status, _ = await get(session, url, first["receipt_id"])
        assert status == 404
        assert not (tmp_path / f"{first['receipt_id']}.receipt.json").exists()
        _, second = await post(session, url, "key-3", b"garbage")
        assert second["receipt_id"] != first["receipt_id"]
        await sim.wait_until(lambda: checked(sim, second["receipt_id"]), timeout_s=30)
        status, answer = await get(session, url, second["receipt_id"])
        assert status == 200 and answer["status"] == "rejected"
