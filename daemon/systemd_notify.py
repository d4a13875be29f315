"""sd_notify(3) in pure Python: readiness, stopping and watchdog pings for Type=notify.

systemd passes `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace) and,
with WatchdogSec=, `$WATCHDOG_USEC` (and `$WATCHDOG_PID`, the process meant to ping).
Outside systemd nothing is set and every call here does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

READY = "READY=1"
STOPPING = "STOPPING=1"
WATCHDOG = "WATCHDOG=1"


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `state` (e.g. "READY=1\\nSTATUS=Consuming") to systemd; False if not under it."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address or address[0] not in "@/":
        return False
    target = "\0" + address[1:] if address[0] == "@" else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Never block the event loop: if systemd's queue is full, the message is lost
            # (a missed watchdog ping is made up by the next one).
            sock.setblocking(False)
            sock.connect(target)
            sock.send(state.encode())
    except OSError as exc:
        log.warning("Could not notify systemd (%s): %s.", state.split("\n")[0], exc.strerror)
        return False
    return True


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """How often to ping: half of WatchdogSec=, or None if the watchdog is off or not ours."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2_000_000


async def watchdog(stop: asyncio.Event, interval_s: float) -> None:
    """Ping while the event loop turns; a loop stuck for WatchdogSec= gets us restarted."""
    while not stop.is_set():
        notify(WATCHDOG)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
