"""Serve the console with uvicorn in a background thread (the demo's loop keeps the main one)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from accelpilot.config import Settings
from accelpilot.console.steering import KafkaActionPublisher, PipelineSteering
from accelpilot.errors import AccelpilotError, ConfigError
from accelpilot.optimizer.scenario import Scenario


class ConsoleServer:
    """``start()`` returns once the socket listens; ``stop()`` asks uvicorn to exit and joins."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.host = host
        self.port = port
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="console", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive():
                raise AccelpilotError(
                    f"the console could not listen on {self.url} (port in use? try --port)"
                )
            if time.monotonic() > deadline:
                raise AccelpilotError(f"the console did not start on {self.url} in {timeout_s} s")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def run_pipeline_console(
    settings: Settings,
    host: str,
    port: int,
    *,
    key_path: Path | None = None,
    scenario: Scenario | None = None,
    hosts: list[str] | None = None,
    cluster: str | None = None,
) -> None:
    """``accelpilot console``: the console over the real pipeline's InfluxDB until Ctrl-C
    (uvicorn in the foreground), of one ``cluster`` (its points' tag) or of every point.
    Read-only without ``key_path``; with it (and the fleet description ``scenario``) its
    power-cap and load sliders publish signed actions to ``fleet.actions`` on
    ``settings.kafka``."""
    from accelpilot.console.app import create_app
    from accelpilot.console.auth import Auth
    from accelpilot.console.influx_source import InfluxSource

    auth = Auth.for_bind(host, settings.console.tokens.get_secret_value())
    source = InfluxSource(settings.influx.url, settings.influx.database, cluster=cluster)
    steering, publisher = None, None
    if key_path is not None:
        if scenario is None:
            raise ConfigError(
                "--key needs --scenario: the fleet description (device limits, streams) the "
                "console checks requests against, as for `accelpilot optimizer run`"
            )
        steering, publisher = pipeline_steering(settings, key_path, scenario, hosts)
    elif scenario is not None or hosts:
        raise ConfigError("--scenario and --hosts are for steering: give --key too")
    app = create_app(None, source, auth, steering)
    db = f"InfluxDB {settings.influx.url} db {settings.influx.database}"
    db += f", cluster {cluster}" if cluster is not None else ", every cluster"
    if steering is None:
        print(f"console (read-only, {db}): http://{host}:{port}")
    else:
        print(
            f"console ({db}; steering {steering.facts.n_devices} devices of "
            f"{steering.fleet_name!r}, key {steering.key_id}, actions to {steering.topic} on "
            f"{settings.kafka.bootstrap_servers}): http://{host}:{port}"
        )
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        if publisher is not None:
            publisher.close()


def pipeline_steering(
    settings: Settings, key_path: Path, scenario: Scenario, hosts: list[str] | None = None
) -> tuple[PipelineSteering, KafkaActionPublisher]:
    """The console's steering: the fleet description's facts (restricted to ``hosts``, as
    ``optimizer run --hosts``), the private key, and a producer on ``fleet.actions``."""
    from accelpilot.optimizer.live import facts_for_hosts
    from accelpilot.schemas.topics import ACTIONS
    from accelpilot.signing import Signer

    facts = facts_for_hosts(scenario, hosts)
    if facts.n_devices == 0:
        raise ConfigError(f"--hosts {hosts}: none of them is in the fleet description")
    signer = Signer.from_file(key_path)
    topic = settings.topic(ACTIONS)
    publisher = KafkaActionPublisher(settings.kafka.bootstrap_servers, topic)
    steering = PipelineSteering(facts, signer, publisher, topic=topic, fleet_name=scenario.name)
    return steering, publisher
