"""load_settings: defaults < TOML file < environment, errors that name the field, masked secrets."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from accelpilot.cli import app
from accelpilot.config import load_settings
from accelpilot.errors import ConfigError

SECRET = "tok-5f3a9c-do-not-print"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No developer ACCELPILOT_* variables, and no ./accelpilot.toml picked up from the cwd."""
    for name in list(os.environ):
        if name.upper().startswith("ACCELPILOT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults() -> None:
    s = load_settings()
    assert s.host_id == socket.gethostname()
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert s.kafka.partitions == 6
    assert s.influx.url == "http://127.0.0.1:8086"
    assert s.influx.bucket == "accelpilot/autogen"
    assert (s.stack.kafka_port, s.stack.kafka_version) == (9092, "3.9.1")
    assert s.worker.max_future_skew_s == 300.0
    assert s.worker.cluster == "default"
    assert s.topic("telemetry.samples") == "telemetry.samples"


def test_file_values(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "x.toml",
        'host_id = "node-7"\n[kafka]\ntopic_prefix = "t1-"\n[stack]\nkafka_port = 19092\n',
    )
    s = load_settings(cfg)
    assert (s.host_id, s.kafka.topic_prefix, s.stack.kafka_port) == ("node-7", "t1-", 19092)
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"  # untouched fields keep defaults
    assert s.topic("telemetry.samples") == "t1-telemetry.samples"


def test_file_found_in_cwd_and_via_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "accelpilot.toml", 'host_id = "from-cwd"\n')
    assert load_settings().host_id == "from-cwd"
    other = write(tmp_path / "other.toml", 'host_id = "from-env-path"\n')
    monkeypatch.setenv("ACCELPILOT_CONFIG", str(other))
    assert load_settings().host_id == "from-env-path"


def test_env_beats_file_and_merges_per_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = write(
        tmp_path / "x.toml", '[kafka]\nbootstrap_servers = "file:9092"\ntopic_prefix = "f-"\n'
    )
    monkeypatch.setenv("ACCELPILOT_KAFKA__BOOTSTRAP_SERVERS", "env:9092")
    monkeypatch.setenv("ACCELPILOT_STACK__KAFKA_HEAP_MB", "1024")
    s = load_settings(cfg)
    assert (s.kafka.bootstrap_servers, s.kafka.topic_prefix) == ("env:9092", "f-")
    assert s.stack.kafka_heap_mb == 1024


def test_overrides_beat_the_file(tmp_path: Path) -> None:
    cfg = write(tmp_path / "x.toml", '[kafka]\ntopic_prefix = "f-"\npartitions = 3\n')
    s = load_settings(cfg, kafka={"topic_prefix": "o-"})
    assert (s.kafka.topic_prefix, s.kafka.partitions) == ("o-", 3)


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ("[stack]\nkafka_port = 80\n", "stack.kafka_port"),
        ('[influx]\nurl = "ftp://x"\n', "influx.url"),
        ("[kafka]\nbogus = 1\n", "kafka.bogus"),
        ("bogus = 1\n", "bogus"),
        ('[worker]\nbatch_max = "many"\n', "worker.batch_max"),
        ('[stack]\nkafka_version = "4.0.0"\n', "stack.kafka_version"),
        ("[kafka]\npartitions = 0\n", "kafka.partitions"),
        ('[worker]\ncluster = "eu west"\n', "worker.cluster"),
        ('[worker]\ncluster = "a,b=c"\n', "worker.cluster"),
        ('[worker]\ncluster = ""\n', "worker.cluster"),
        ('[worker]\ncluster = "-x"\n', "worker.cluster"),
        ('[worker]\ncluster = "a/b"\n', "worker.cluster"),
        ('[worker]\ncluster = "a\\\\b"\n', "worker.cluster"),
    ],
)
def test_bad_file_value_names_the_field(tmp_path: Path, toml: str, field: str) -> None:
    with pytest.raises(ConfigError, match=f"field '{field}'"):
        load_settings(write(tmp_path / "bad.toml", toml))


def test_bad_env_value_names_the_field_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELPILOT_STACK__KAFKA_PORT", "80")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "field 'stack.kafka_port' (env ACCELPILOT_STACK__KAFKA_PORT)" in str(err.value)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path / "broken.toml", "[kafka\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml")


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(ValidationError, match="frozen"):
        s.host_id = "x"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        s.kafka.bootstrap_servers = "x"  # type: ignore[misc]


def test_masked_hides_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELPILOT_INFLUX__TOKEN", SECRET)
    s = load_settings()
    assert s.influx.token.get_secret_value() == SECRET
    masked = s.masked()
    assert masked["influx"]["token"] == "**********"
    assert SECRET not in json.dumps(masked)
    assert SECRET not in repr(s)


def test_cli_config_show_json_has_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = write(tmp_path / "x.toml", f'[influx]\ntoken = "{SECRET}"\ndatabase = "fleet"\n')
    monkeypatch.setenv("ACCELPILOT_KAFKA__TOPIC_PREFIX", "cli-")
    result = CliRunner().invoke(app, ["config", "show", "--json", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    shown = json.loads(result.stdout)
    assert shown["influx"] == {**shown["influx"], "database": "fleet", "token": "**********"}
    assert shown["kafka"]["topic_prefix"] == "cli-"


def test_write_toml_round_trips_every_section(tmp_path: Path) -> None:
    from accelpilot.config import write_toml

    settings = load_settings(
        kafka={"topic_prefix": "t1."},
        worker={"windows_s": (2.0, 30.0)},
        agent={"backends": ("sim",), "scenario": "demo-fleet"},
        influx={"token": "user:s3cret"},
    )
    path = write_toml(settings, tmp_path / "s.toml")
    again = load_settings(path)
    assert again.model_dump() == settings.model_dump()
    assert again.influx.token.get_secret_value() == "user:s3cret"
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_worker_cluster_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELPILOT_WORKER__CLUSTER", "eu-west.gpu_2")
    assert load_settings().worker.cluster == "eu-west.gpu_2"
    monkeypatch.setenv("ACCELPILOT_WORKER__CLUSTER", 'eu"west')
    with pytest.raises(ConfigError, match=r"field 'worker\.cluster' .*not a cluster name"):
        load_settings()
