"""deploy/docker-compose.yml cannot run here (no Docker engine); keep it true to the code."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from accelpilot.cli import app
from accelpilot.config import load_settings

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "docker-compose.yml"


def _compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load(COMPOSE.read_text())


def _accelpilot_services() -> dict:  # type: ignore[type-arg]
    return {n: s for n, s in _compose()["services"].items() if "build" in s}


def test_every_accelpilot_variable_is_a_real_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    services = _accelpilot_services()
    assert services, "no accelpilot service in the compose file"
    for name, service in services.items():
        env = service["environment"]
        for key, value in env.items():
            assert key.startswith("ACCELPILOT_"), f"{name}: {key}"
            monkeypatch.setenv(key, str(value))
        settings = load_settings()
        dumped = settings.model_dump(mode="json")
        for key, value in env.items():
            section, field = key.removeprefix("ACCELPILOT_").lower().split("__")
            assert str(dumped[section][field]) == str(value), f"{name}: {key} not applied"


def test_every_service_command_is_a_real_cli_command() -> None:
    for name, service in _accelpilot_services().items():
        result = CliRunner().invoke(app, [*service["command"], "--help"])
        assert result.exit_code == 0, f"{name}: {service['command']} -> {result.output}"


def test_compose_points_workers_at_the_compose_services() -> None:
    services = _compose()["services"]
    for service in _accelpilot_services().values():
        env = service["environment"]
        assert env["ACCELPILOT_KAFKA__BOOTSTRAP_SERVERS"].split(":")[0] in services
        host = env["ACCELPILOT_INFLUX__URL"].split("//")[1].split(":")[0]
        assert host in services


def _units() -> list[Path]:
    return sorted((COMPOSE.parent / "systemd").glob("*.service"))


def test_systemd_units_run_real_commands_with_real_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    assert _units()
    for unit in _units():
        lines = unit.read_text().splitlines()
        exec_start = next(ln for ln in lines if ln.startswith("ExecStart="))
        argv = exec_start.split("=", 1)[1].split()
        assert argv[0].endswith("/accelpilot"), unit.name
        command = [a for a in argv[1:] if not a.startswith("-") and "/" not in a]
        result = CliRunner().invoke(app, [*command, "--help"])
        assert result.exit_code == 0, f"{unit.name}: {command} -> {result.output}"
        for ln in lines:
            if ln.startswith("Environment=ACCELPILOT_"):
                key, value = ln.removeprefix("Environment=").split("=", 1)
                monkeypatch.setenv(key, value.replace("%i", "0"))
                section, field = key.removeprefix("ACCELPILOT_").lower().split("__")
                assert field in type(getattr(load_settings(), section)).model_fields, key
        load_settings()  # and together they load
