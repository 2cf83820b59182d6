"""`accelpilot stack up|down|status`: bring the real services up idempotently, with timings."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from accelpilot.config import Settings
from accelpilot.errors import StackError
from accelpilot.schemas.topics import ALL_TOPICS
from accelpilot.stack.influxdb import InfluxServer
from accelpilot.stack.kafka import KafkaBroker, create_topics

Progress = Callable[[str], None]


@dataclass
class StepTimes:
    steps_s: dict[str, float] = field(default_factory=dict)

    def run(self, name: str, fn: Callable[[], object], progress: Progress) -> None:
        progress(f"- {name} ...")
        t0 = time.monotonic()
        fn()
        self.steps_s[name] = round(time.monotonic() - t0, 2)
        progress(f"  {name}: done in {self.steps_s[name]:.1f} s")

    @property
    def total_s(self) -> float:
        return round(sum(self.steps_s.values()), 2)


class Stack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.kafka = KafkaBroker(settings)
        self.influx = InfluxServer(settings)

    def up(self, progress: Progress = print) -> StepTimes:
        """Fetch/build what is missing, start what is down, create topics and the database."""
        times = StepTimes()
        times.run(
            "kafka: fetch broker jars (Maven Central, cached)", self.kafka.fetch_jars, progress
        )
        times.run("influxdb: build influxd (cached)", lambda: self.influx.build(progress), progress)
        times.run("kafka: write config, format KRaft storage", self.kafka.prepare, progress)
        times.run("kafka: start broker", self.kafka.start, progress)
        times.run("influxdb: start server", self.influx.start, progress)
        times.run("kafka: wait for metadata", self.kafka.wait_ready, progress)
        times.run("influxdb: wait for /health", self.influx.wait_ready, progress)
        times.run(
            "kafka: create topics",
            lambda: create_topics(
                self.kafka.bootstrap,
                [self.settings.topic(t) for t in ALL_TOPICS],
                self.settings.kafka.partitions,
            ),
            progress,
        )
        times.run("influxdb: create database", self.influx.create_database, progress)
        return times

    def down(self, wipe: bool = False, progress: Progress = print) -> None:
        stopped = []
        for name, svc in (("kafka", self.kafka), ("influxdb", self.influx)):
            if svc.stop():
                stopped.append(name)
            if wipe:
                svc.wipe()
        progress(
            f"stopped: {', '.join(stopped) or 'nothing was running'}"
            + ("; state wiped" if wipe else "")
        )

    def status(self) -> dict[str, dict[str, object]]:
        return {
            "kafka": {
                "version": self.kafka.version,
                "jars_cached": self.kafka.jars_present(),
                "pid": self.kafka.pid(),
                "bootstrap": self.kafka.bootstrap,
                "ready": self._kafka_ready(),
            },
            "influxdb": {
                "version": self.influx.version,
                "binary_cached": self.influx.binary_present(),
                "pid": self.influx.pid(),
                "url": self.influx.url,
                "ready": self.influx.healthy(),
            },
        }

    def _kafka_ready(self) -> bool:
        if self.kafka.pid() is None:
            return False
        try:
            admin = self.kafka.admin()
            admin.list_topics()
            admin.close()
            return True
        except Exception:
            return False

    def require_ready(self) -> None:
        st = self.status()
        for name, info in st.items():
            if not info["ready"]:
                raise StackError(f"{name}:check", f"{name} is not up; run `accelpilot stack up`")
