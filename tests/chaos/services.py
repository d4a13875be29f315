"""Private instances for the chaos suite: PostgreSQL, RabbitMQ, Mosquitto (the starters
the demo and the tests share, `daemon.dev.instances`), a p11-kit server and the daemons,
each on its own ports under one temporary directory, so that killing and restarting
them never touches the machine's shared services."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from daemon.dev import instances
from daemon.dev.instances import Mosquitto, free_port, wait_port
from daemon.dev.instances import killpg as _killpg

__all__ = ["Mosquitto", "Postgres", "RabbitMQ", "free_port", "wait_port"]

P11KIT_CLIENT = Path("/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so")
SOFTHSM = Path("/usr/lib/softhsm/libsofthsm2.so")
VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


class Postgres(instances.Postgres):
    """The shared private cluster, with the chaos run's database in its DSN."""

    database = "hocba_chaos"


class RabbitMQ(instances.RabbitMQ):
    """A private node `chaos-<id>@localhost`."""

    def __init__(self, base: Path, tag: str) -> None:
        super().__init__(base, f"chaos-{tag}@localhost")


class P11KitServer:
    """`p11-kit server` exporting the SoftHSM token on a fixed socket path."""

    def __init__(self, base: Path, token_label: str, softhsm_env: dict[str, str]) -> None:
        self.socket = base / "p11kit.sock"
        self.token_label = token_label
        self.env = softhsm_env
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"unix:path={self.socket}"

    def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [
                "p11-kit", "server", "-f", "--provider", str(SOFTHSM),
                "-n", str(self.socket), f"pkcs11:token={self.token_label}",
            ],
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("p11-kit server did not create its socket")
            time.sleep(0.1)

    def stop(self) -> None:
        _killpg(self.process)
        self.process = None


@dataclass
class Daemon:
    """One `hocba-signer run` instance, in its own process group (HSM workers included)."""

    name: str
    config: Path
    env: dict[str, str]
    log: Path
    http_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    started_at: float = 0.0

    def start(self) -> None:
        env = {
            **os.environ,
            **self.env,
            "HOCBA_INSTANCE": self.name,
            "HOCBA_HTTP__PORT": str(self.http_port),
        }
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(VENV_BIN / "hocba-signer"), "--config", str(self.config), "run"],
                env=env,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        self.starts += 1
        self.started_at = time.monotonic()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        _killpg(self.process, signal.SIGKILL)

    def stop(self) -> None:
        _killpg(self.process, signal.SIGTERM)


def daemon_env(
    mosquitto: Mosquitto, p11kit: P11KitServer, *, retry_cap_ms: int, max_attempts: int
) -> dict[str, str]:
    return {
        "HOCBA_MQTT__PORT": str(mosquitto.port),
        "HOCBA_HSM__MODULE": str(P11KIT_CLIENT),
        "HOCBA_HSM__ENV": json.dumps({"P11_KIT_SERVER_ADDRESS": p11kit.address}),
        "HOCBA_HSM__WORKERS": "1",
        "HOCBA_HSM__OP_TIMEOUT_S": "10",
        "HOCBA_AMQP__PREFETCH": "8",
        "HOCBA_AMQP__RETRY_BASE_MS": "250",
        "HOCBA_AMQP__RETRY_CAP_MS": str(retry_cap_ms),
        "HOCBA_AMQP__MAX_ATTEMPTS": str(max_attempts),
        "HOCBA_SHUTDOWN_TIMEOUT_S": "5",
        "HOCBA_DATABASE__COMMAND_TIMEOUT_S": "10",
    }


class TmpfsStore:
    """The document store on a small tmpfs, to fill up on purpose; a no-op if not root."""

    def __init__(self, path: Path, size_mb: int) -> None:
        self.path = path
        self.size_mb = size_mb
        self.mounted = False
        self.filler = path / ".chaos-filler"

    def mount(self) -> bool:
        self.path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m", "tmpfs", str(self.path)],
            capture_output=True,
        )
        self.mounted = done.returncode == 0
        return self.mounted

    def fill(self) -> int:
        """Write zeros until ENOSPC; the bytes written."""
        written = 0
        chunk = b"\0" * (1 << 20)
        with contextlib.suppress(OSError), self.filler.open("wb") as out:
            while True:
                out.write(chunk)
                out.flush()
                written += len(chunk)
        return written

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            self.mounted = False
