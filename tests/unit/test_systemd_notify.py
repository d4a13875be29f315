"""sd_notify over a real datagram socket, as systemd listens for it."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon import systemd_notify


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


def test_ready_reaches_the_notify_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    assert systemd_notify.notify("READY=1\nSTATUS=Consuming", {"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"READY=1\nSTATUS=Consuming"


def test_abstract_socket_names_are_supported() -> None:
    name = f"hocba-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert systemd_notify.notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"STOPPING=1"


def test_outside_systemd_nothing_is_sent(tmp_path: Path) -> None:
    assert not systemd_notify.notify("READY=1", {})
    assert not systemd_notify.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "none")})


def test_the_watchdog_pings_at_half_its_interval() -> None:
    pid = str(os.getpid())
    assert systemd_notify.watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}
    assert systemd_notify.watchdog_interval_s(env) == 15.0
    assert systemd_notify.watchdog_interval_s({**env, "WATCHDOG_PID": "1"}) is None
    assert systemd_notify.watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert systemd_notify.watchdog_interval_s({}) is None


async def test_the_watchdog_task_pings_until_stopped(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    stop = asyncio.Event()
    task = asyncio.create_task(systemd_notify.watchdog(stop, 0.01))
    first = await asyncio.to_thread(sock.recv, 4096)
    second = await asyncio.to_thread(sock.recv, 4096)
    stop.set()
    await task
    assert first == second == b"WATCHDOG=1"
