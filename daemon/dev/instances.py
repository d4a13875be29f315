"""Private PostgreSQL, RabbitMQ and Mosquitto instances, each on its own ports under one
folder, for the demo and the tests (when the machine's own services cannot serve) and
for the chaos suite (which kills and restarts them).

As root, each server runs as its Debian system user (`postgres`, `rabbitmq`,
`mosquitto`), as Debian runs them; otherwise as the calling user. The folder keeps the
data, so a second start reuses the cluster and the node.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import time
from pathlib import Path

from daemon.errors import ConfigError

RABBITMQ_LIB = Path("/usr/lib/rabbitmq/bin")
MOSQUITTO = Path("/usr/sbin/mosquitto")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_port(
    port: int, timeout_s: float = 60, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until something listens on `port` (or `process`, its server, has exited)."""
    deadline = time.monotonic() + timeout_s
    while not port_open(port):
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server for port {port} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on port {port} after {timeout_s}s")
        time.sleep(0.2)


def killpg(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGKILL) -> None:
    """Signal the process group of `process` and wait for it (SIGKILL if it lingers)."""
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


def owned(path: Path, user: str) -> Path:
    """`path`, created and (as root) given to `user`, who must be able to reach it."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(path, user, user)
        blocked = [p for p in path.parents if not os.stat(p).st_mode & 0o001]
        if blocked:
            raise ConfigError(
                f"The private {user} server cannot reach {path}: {blocked[0]} is closed to "
                f"other users. Run from a folder others may enter (chmod o+x {blocked[0]}), "
                "or use the machine's services (HOCBA_SERVICES=system)."
            )
    return path


def _as_user(user: str) -> list[str]:
    return ["runuser", "-u", user, "--preserve-environment", "--"] if os.geteuid() == 0 else []


def _tool(name: str, *candidates: Path) -> str:
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise ConfigError(f"{name} is not installed: run `make deps`.")
    return found


class Postgres:
    """A cluster made with initdb (trust, on 127.0.0.1 and a socket in its folder)."""

    database = "postgres"

    def __init__(self, base: Path, port: int | None = None) -> None:
        self.dir = owned(base / "pg", "postgres")
        self.port = port or free_port()
        versions = sorted(
            Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name)
        )
        if not versions:
            raise ConfigError("PostgreSQL is not installed: run `make deps`.")
        self.bin = versions[-1]

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args: str, check: bool = True) -> None:
        subprocess.run(
            [*_as_user("postgres"), *args],
            check=check,
            capture_output=True,
            timeout=120,
            cwd=self.dir,
        )

    def init(self) -> None:
        """initdb, unless the folder already holds a cluster."""
        if (self.dir / "data" / "PG_VERSION").exists():
            return
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
    """A node of its own (name, ports, data, Erlang cookie and epmd), in the foreground."""

    def __init__(self, base: Path, node: str) -> None:
        self.dir = owned(base / "rabbitmq", "rabbitmq")
        self.node = node
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        plugins = self.dir / "enabled_plugins"
        # The sign shards' exchange type (README "Fairness between schools").
        plugins.write_text("[rabbitmq_consistent_hash_exchange].\n")
        # The node and rabbitmqctl (root or not) must share one cookie: written here,
        # before either would make its own.
        cookie = self.dir / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text("".join(secrets.choice(string.ascii_uppercase) for _ in range(20)))
        cookie.chmod(0o400)
        if os.geteuid() == 0:
            for path in (plugins, cookie):
                shutil.chown(path, "rabbitmq", "rabbitmq")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def env(self) -> dict[str, str]:
        """What the server and its CLI tools need to find this node (and only it)."""
        return {
            **os.environ,
            "HOME": str(self.dir),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_NODENAME": self.node,
        }

    def start(self) -> None:
        env = {
            **self.env,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.dir / "pid"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),
        }
        server = _tool("rabbitmq-server", RABBITMQ_LIB / "rabbitmq-server")
        self.process = subprocess.Popen(
            [*_as_user("rabbitmq"), server],
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
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(1)
        wait_port(self.port)

    def ctl(self, *args: str) -> None:
        """rabbitmqctl against this node (root reads the node's cookie in its HOME)."""
        subprocess.run(
            [_tool("rabbitmqctl", RABBITMQ_LIB / "rabbitmqctl"), "-q", "-n", self.node, *args],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=150,
        )

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.ctl("stop")
        killpg(self.process, signal.SIGTERM)
        self.process = None
        # The node started an epmd on its own port; nothing else uses that one.
        with contextlib.suppress(subprocess.SubprocessError, ConfigError):
            subprocess.run(
                [_tool("epmd"), "-port", str(self.epmd_port), "-kill"],
                capture_output=True,
                timeout=10,
            )


class Mosquitto:
    """A broker with its own config, port and persistence file; anonymous, on loopback."""

    def __init__(self, base: Path) -> None:
        self.dir = owned(base / "mosquitto", "mosquitto")
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        (self.dir / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {self.dir}/\n"
            "max_queued_messages 100000\n"
        )

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                _tool("mosquitto", Path("/usr/sbin/mosquitto")),
                "-c",
                str(self.dir / "mosquitto.conf"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_port(self.port, process=self.process)

    def stop(self) -> None:
        killpg(self.process, signal.SIGTERM)
        self.process = None
