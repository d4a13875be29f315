"""The store section: fs by default, s3 credentials from a file, given together or not at all."""

from pathlib import Path

import pytest

from daemon.errors import ConfigError
from daemon.settings import S3Settings, Settings


def test_the_default_store_is_the_local_filesystem() -> None:
    assert Settings().store.backend == "fs"


def test_the_s3_secret_comes_from_its_file_and_never_prints(tmp_path: Path) -> None:
    secret = tmp_path / "s3-secret-access-key"
    secret.write_text("wJalrXUtnFEMI-example\n")
    s3 = S3Settings(access_key_id="hocba", secret_access_key_file=secret)
    resolved = s3.resolved_secret_access_key()
    assert resolved is not None and resolved.get_secret_value() == "wJalrXUtnFEMI-example"
    assert "wJalr" not in repr(resolved) and "wJalr" not in str(s3)


def test_a_key_id_without_its_secret_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError):
        S3Settings(access_key_id="hocba").resolved_secret_access_key()
    assert S3Settings().resolved_secret_access_key() is None  # botocore's default chain


def test_the_secret_may_be_a_systemd_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "s3-secret-access-key").write_text("from-systemd")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    resolved = S3Settings(access_key_id="hocba").resolved_secret_access_key()
    assert resolved is not None and resolved.get_secret_value() == "from-systemd"
