"""The real stack's lifecycle: idempotent `up`, a second isolated stack on other ports, clean
`down`, and failures that name the step."""

from __future__ import annotations

from pathlib import Path

import pytest

from accelpilot.config import Settings, load_settings
from accelpilot.errors import StackError
from accelpilot.stack.influxdb import influxql
from accelpilot.stack.manager import Stack

pytestmark = pytest.mark.service


def test_second_up_reuses_everything(stack: Settings) -> None:
    st = Stack(stack)
    before = st.status()
    times = st.up(progress=lambda s: None)
    after = st.status()
    assert after["kafka"]["pid"] == before["kafka"]["pid"]
    assert after["influxdb"]["pid"] == before["influxdb"]["pid"]
    assert all(info["ready"] for info in after.values())
    assert set(times.steps_s) >= {"kafka: start broker", "influxdb: start server"}


@pytest.mark.slow
def test_isolated_stack_starts_answers_and_stops(stack: Settings, tmp_path: Path) -> None:
    settings = load_settings(
        kafka={"bootstrap_servers": "127.0.0.1:19092"},
        influx={"url": "http://127.0.0.1:18086", "database": "isolated"},
        stack={
            "run_dir": str(tmp_path / "run"),
            "kafka_port": 19092,
            "kafka_controller_port": 19093,
            "influx_port": 18086,
            "influx_rpc_port": 18088,
        },
    )
    st = Stack(settings)
    assert not any(info["ready"] for info in st.status().values())
    try:
        st.up(progress=lambda s: None)
        status = st.status()
        assert status["kafka"]["ready"] and status["influxdb"]["ready"]
        dbs = influxql(settings.influx.url, "SHOW DATABASES")["results"][0]["series"][0]["values"]
        assert ["isolated"] in dbs
        admin = st.kafka.admin()
        assert "telemetry.samples" in admin.list_topics()
        admin.close()
    finally:
        st.down(progress=lambda s: None)
    status = st.status()
    assert status["kafka"]["pid"] is None and status["influxdb"]["pid"] is None
    # The shared stack was not touched.
    assert all(info["ready"] for info in Stack(stack).status().values())


def test_missing_maven_names_the_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    settings = load_settings(stack={"cache_dir": str(tmp_path / "cache")})
    with pytest.raises(StackError) as err:
        Stack(settings).kafka.fetch_jars()
    assert err.value.step == "kafka:fetch-jars"
    assert "mvn" in str(err.value)


def test_missing_go_names_the_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    settings = load_settings(stack={"cache_dir": str(tmp_path / "cache")})
    with pytest.raises(StackError) as err:
        Stack(settings).influx.build(progress=lambda s: None)
    assert err.value.step == "influxdb:build"
    assert "Go is not on PATH" in str(err.value)


def test_broker_that_dies_at_start_reports_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(
        stack={
            "run_dir": str(tmp_path / "run"),
            "cache_dir": str(tmp_path / "cache"),
            "start_timeout_s": 20,
            "kafka_port": 29092,
            "kafka_controller_port": 29093,
        }
    )
    kafka = Stack(settings).kafka
    kafka.jar_dir.mkdir(parents=True)  # no jars: the JVM cannot find kafka.Kafka and exits
    kafka.run_dir.mkdir(parents=True)
    (kafka.run_dir / "logs").mkdir()
    (kafka.run_dir / "server.properties").write_text("")
    (kafka.run_dir / "log4j.properties").write_text("")
    kafka.start()
    with pytest.raises(StackError) as err:
        kafka.wait_ready()
    assert err.value.step == "kafka:wait-ready"
    assert "exited" in str(err.value)
