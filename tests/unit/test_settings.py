import json
import os
from pathlib import Path

import pytest

from daemon.errors import ConfigError
from daemon.settings import load_settings


def test_toml_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[amqp]\nprefetch = 10\n[http]\nport = 9000\n", encoding="utf-8")
    monkeypatch.setenv("HOCBA_HTTP__PORT", "9100")
    settings = load_settings(config)
    assert settings.amqp.prefetch == 10
    assert settings.http.port == 9100


def test_a_file_is_the_calls_own_and_never_leaks_into_the_next_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Once load_settings(path) set $HOCBA_CONFIG for the whole process: every later load
    # without a path (and every command a test ran next) read that file.
    monkeypatch.delenv("HOCBA_CONFIG", raising=False)
    config = tmp_path / "c.toml"
    config.write_text("[amqp]\nprefetch = 10\n", encoding="utf-8")

    assert load_settings(config).amqp.prefetch == 10

    assert "HOCBA_CONFIG" not in os.environ
    assert load_settings().amqp.prefetch != 10
    monkeypatch.setenv("HOCBA_CONFIG", str(config))
    assert load_settings().amqp.prefetch == 10


def test_secrets_come_from_files_and_never_print(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pin = tmp_path / "pin"
    pin.write_text("12345678\n", encoding="utf-8")
    monkeypatch.setenv("HOCBA_HSM__PIN_FILE", str(pin))
    settings = load_settings()
    assert settings.hsm.resolved_pin().get_secret_value() == "12345678"
    assert "12345678" not in repr(settings) + str(settings) + repr(settings.hsm.resolved_pin())


def test_systemd_credentials_are_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hsm-pin").write_text("87654321", encoding="utf-8")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert load_settings().hsm.resolved_pin().get_secret_value() == "87654321"


def test_a_missing_pin_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError):
        load_settings().hsm.resolved_pin()


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[amqp]\nprefech = 10\n", encoding="utf-8")
    with pytest.raises(ConfigError):
        load_settings(config)


def test_the_example_configuration_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).parents[2] / "config" / "hocba-signer.example.toml"
    assert load_settings(example).amqp.prefetch >= 1


@pytest.mark.parametrize("prefix", ["hocba/+", "#", "$SYS/hocba", "a\x00b", ""])
def test_a_topic_prefix_no_broker_would_publish_to_is_refused_at_start(
    tmp_path: Path, prefix: str
) -> None:
    config = tmp_path / "c.toml"
    # A TOML basic string takes JSON's escapes, \u0000 among them.
    config.write_text(f"[mqtt]\ntopic_prefix = {json.dumps(prefix)}\n", encoding="utf-8")
    with pytest.raises(ConfigError):
        load_settings(config)


def test_a_topic_prefix_of_several_levels_is_accepted(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[mqtt]\ntopic_prefix = "district/q3/hocba"\n', encoding="utf-8")
    assert load_settings(config).mqtt.topic_prefix == "district/q3/hocba"
