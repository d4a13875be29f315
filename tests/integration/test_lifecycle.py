"""`hocba-signer run` as operators run it: ready when consuming, clean exit on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp

from daemon.dev import env as devenv
from daemon.settings import Settings


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _ready(port: int) -> bool:
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/readyz") as response,
        ):
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def test_run_becomes_ready_and_stops_cleanly_on_sigterm(
    dev_env: devenv.DevEnv, settings: Settings, tmp_path: Path
) -> None:
    # Given the daemon started as a process, the way systemd starts it
    port = _free_port()
    env = {
        **os.environ,
        "HOCBA_CONFIG": str(dev_env.config_path),
        "HOCBA_HTTP__PORT": str(port),
        "HOCBA_INSTANCE": "lifecycle-test",
        "HOCBA_MQTT__TOPIC_PREFIX": settings.mqtt.topic_prefix,
    }
    binary = Path(sys.executable).with_name("hocba-signer")
    process = await asyncio.create_subprocess_exec(
        str(binary), "run", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        # When it reports ready
        async with asyncio.timeout(120):
            while not await _ready(port):
                assert process.returncode is None, "the daemon exited before it was ready"
                await asyncio.sleep(0.3)

        # Then SIGTERM stops it cleanly, closing what it opened
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            _, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    log = stderr.decode()
    assert process.returncode == 0, log
    assert "Stopping." in log
    assert "Traceback" not in log
    # And nothing secret reached the log
    pin = (dev_env.base / "hsm-pin").read_text().strip()
    assert pin not in log
