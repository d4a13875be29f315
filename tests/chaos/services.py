"""Private instances for the chaos suite: PostgreSQL, RabbitMQ, Mosquitto, a p11-kit
server and the daemons, each on its own ports under one temporary directory, so that
killing and restarting them never touches the machine's shared services."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

P11KIT_CLIENT = Path("/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so")
SOFTHSM = Path("/usr/lib/softhsm/libsofthsm2.so")
VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout_s}s")


def _killpg(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGKILL) -> None:
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _owned(path: Path, user: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    shutil.chown(path, user, user) if os.geteuid() == 0 else None
    return path


class Postgres:
    """initdb into a temp dir; started and stopped with pg_ctl (as `postgres` when root)."""

    def __init__(self, base: Path) -> None:
        self.dir = _owned(base / "pg", "postgres")
        self.port = free_port()
        self.bin = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/hocba_chaos"

    def _run(self, *args: str, check: bool = True) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [*prefix, *args], check=check, capture_output=True, timeout=120, cwd=self.dir
        )

    def init(self) -> None:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-A", "trust",
            "-U", "postgres", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c max_connections=200"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-o", options,
            "-l", str(self.dir / "log"), "-w", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", mode, "-w", "stop",
            check=False,
        )  # fmt: skip


class RabbitMQ:
    """A private node `chaos-<id>@localhost`, run in the foreground as `rabbitmq`."""

    def __init__(self, base: Path, tag: str) -> None:
        self.dir = _owned(base / "rabbitmq", "rabbitmq")
        self.node = f"chaos-{tag}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        (self.dir / "enabled_plugins").write_text("[].\n")
        shutil.chown(self.dir / "enabled_plugins", "rabbitmq", "rabbitmq")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self) -> None:
        env = {
            **os.environ,
            "HOME": "/var/lib/rabbitmq",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.dir / "pid"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),
        }
        prefix = ["runuser", "-u", "rabbitmq", "--preserve-environment", "--"]
        self.process = subprocess.Popen(
            [*prefix, "/usr/lib/rabbitmq/bin/rabbitmq-server"],
            env=env,
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        # await_startup fails at once while the node is not yet known to epmd.
        deadline = time.monotonic() + 120
        while True:
            try:
                self.ctl("await_startup", "--timeout", "60")
                break
            except subprocess.SubprocessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        wait_port(self.port)

    def ctl(self, *args: str) -> None:
        subprocess.run(
            ["rabbitmqctl", "-q", "-n", self.node, *args],
            check=True,
            capture_output=True,
            timeout=150,
        )

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.ctl("stop")
        _killpg(self.process, signal.SIGTERM)
        self.process = None


class Mosquitto:
    def __init__(self, base: Path) -> None:
        self.dir = _owned(base / "mosquitto", "mosquitto")
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        (self.dir / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {self.dir}/\n"
            "max_queued_messages 100000\n"
        )

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["mosquitto", "-c", str(self.dir / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_port(self.port)

    def stop(self) -> None:
        _killpg(self.process, signal.SIGTERM)
        self.process = None


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
