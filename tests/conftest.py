"""Shared fixtures. Service-backed tests (marker ``service``) get the real stack, brought up once
per session by the project's own code, and each test gets its own topics and database."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from accelpilot.config import Settings, load_settings
from accelpilot.config import write_toml as write_config  # noqa: F401 - used by service tests
from accelpilot.schemas.topics import ALL_TOPICS
from tests.reaper import close_watchdog

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _reap_stray_processes() -> Iterator[None]:
    """Kill the process groups that tests registered (tests/reaper.py) when the session ends."""
    yield
    close_watchdog()


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 held by a listening socket for the test (a port in use)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield int(taken.getsockname()[1])


@pytest.fixture(scope="session")
def stack() -> Iterator[Settings]:
    """The real Kafka + InfluxDB on 127.0.0.1, started (and stopped) here unless already up."""
    from accelpilot.stack.manager import Stack

    settings = load_settings()
    st = Stack(settings)
    already_up = all(info["ready"] for info in st.status().values())
    if not already_up:
        st.up(progress=lambda s: None)
    yield settings
    if not already_up and os.environ.get("ACCELPILOT_KEEP_STACK") != "1":
        st.down()


@pytest.fixture
def service_settings(stack: Settings, tmp_path: Path) -> Iterator[Settings]:
    """Settings with test-unique topics, database and worker id; all of them removed afterwards."""
    from accelpilot.stack.influxdb import influxql
    from accelpilot.stack.kafka import create_topics, delete_topics

    tag = uuid.uuid4().hex[:10]
    settings = load_settings(
        kafka={"topic_prefix": f"t{tag}.", "partitions": 3},
        influx={"database": f"test_{tag}"},
        worker={"app_id": f"worker-{tag}", "data_dir": str(tmp_path / "worker")},
    )
    topics = [settings.topic(t) for t in ALL_TOPICS]
    create_topics(settings.kafka.bootstrap_servers, topics, partitions=3)
    influxql(settings.influx.url, f'CREATE DATABASE "{settings.influx.database}"')
    yield settings
    delete_topics(settings.kafka.bootstrap_servers, topics)
    influxql(settings.influx.url, f'DROP DATABASE "{settings.influx.database}"')
