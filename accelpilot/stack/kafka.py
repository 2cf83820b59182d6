"""A real single-node Apache Kafka (KRaft) broker on 127.0.0.1, from Maven Central jars.

Steps: fetch the broker's jars (``org.apache.kafka:kafka_2.13`` plus the SLF4J/reload4j binding)
with Maven into the cache, write ``server.properties``, format KRaft storage once, start the JVM
with a bounded heap, wait until the broker answers a metadata request, create the topics.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

from accelpilot.config import Settings
from accelpilot.errors import StackError
from accelpilot.stack import process

if TYPE_CHECKING:
    from kafka.admin import KafkaAdminClient

SLF4J_BINDING = ("org.slf4j", "slf4j-reload4j", "1.7.36")

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.accelpilot.stack</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{version}</version></dependency>
    <dependency><groupId>{b_group}</groupId><artifactId>{b_artifact}</artifactId>
      <version>{b_version}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J = """log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File=${kafka.logs.dir}/server.log
log4j.appender.file.MaxFileSize=20MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.request.logger=WARN
"""


class KafkaBroker:
    """One broker whose jars live under the cache and whose state lives under the run dir."""

    def __init__(self, settings: Settings) -> None:
        st = settings.stack
        self.version = st.kafka_version
        self.port = st.kafka_port
        self.controller_port = st.kafka_controller_port
        self.heap_mb = st.kafka_heap_mb
        self.partitions = settings.kafka.partitions
        self.jar_dir = st.cache_dir.expanduser() / "kafka" / self.version / "libs"
        self.run_dir = st.run_dir.expanduser() / "kafka"
        self.data_dir = self.run_dir / "data"
        self.pid_file = self.run_dir / "kafka.pid"
        self.log_file = self.run_dir / "stdout.log"
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.timeout_s = st.start_timeout_s

    # -- jars ---------------------------------------------------------------------------------
    def jars_present(self) -> bool:
        return (self.jar_dir / ".complete").exists()

    def fetch_jars(self) -> None:
        """Resolve the broker and its SLF4J binding from Maven Central into the cache (once)."""
        if self.jars_present():
            return
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError("kafka:fetch-jars", "Maven (mvn) is not on PATH; install maven")
        work = self.jar_dir.parent
        work.mkdir(parents=True, exist_ok=True)
        g, a, v = SLF4J_BINDING
        (work / "pom.xml").write_text(
            _POM.format(version=self.version, b_group=g, b_artifact=a, b_version=v)
        )
        tmp = work / "libs.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(work / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
            "-DincludeScope=runtime",
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        if res.returncode != 0:
            raise StackError(
                "kafka:fetch-jars",
                f"mvn exited {res.returncode}: {(res.stdout + res.stderr)[-1500:]}",
            )
        if not list(tmp.glob("kafka_2.13-*.jar")):
            raise StackError("kafka:fetch-jars", f"no kafka_2.13 jar landed in {tmp}")
        shutil.rmtree(self.jar_dir, ignore_errors=True)
        tmp.rename(self.jar_dir)
        (self.jar_dir / ".complete").write_text(self.version)

    # -- config and storage -------------------------------------------------------------------
    def _properties(self) -> str:
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                f"log.dirs={self.data_dir}",
                f"num.partitions={self.partitions}",
                "default.replication.factor=1",
                "min.insync.replicas=1",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=1",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "transaction.state.log.num.partitions=1",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=true",
                "log.retention.hours=24",
                "log.segment.bytes=67108864",
                "num.network.threads=2",
                "num.io.threads=2",
                "",
            ]
        )

    def _java_argv(self, main: str, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise StackError("kafka:java", "java is not on PATH; install a JDK 17 (openjdk-17-jre)")
        return [
            java,
            f"-Xmx{self.heap_mb}m",
            f"-Xms{min(self.heap_mb, 256)}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self.run_dir / 'log4j.properties'}",
            f"-Dkafka.logs.dir={self.run_dir / 'logs'}",
            "-cp",
            f"{self.jar_dir}/*",
            main,
            *args,
        ]

    def prepare(self) -> None:
        """Write the config and format KRaft storage if this run dir has none yet."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(exist_ok=True)
        (self.run_dir / "server.properties").write_text(self._properties())
        (self.run_dir / "log4j.properties").write_text(_LOG4J)
        if (self.data_dir / "meta.properties").exists():
            return
        cluster_id = _random_cluster_id()
        argv = self._java_argv(
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(self.run_dir / "server.properties"),
            "-g",
        )
        res = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
        if res.returncode != 0:
            raise StackError("kafka:format-storage", (res.stdout + res.stderr)[-1500:])

    # -- lifecycle ----------------------------------------------------------------------------
    def pid(self) -> int | None:
        return process.read_pid(self.pid_file)

    def start(self) -> None:
        if self.pid() is not None:
            return
        argv = self._java_argv("kafka.Kafka", str(self.run_dir / "server.properties"))
        process.start_daemon("kafka:start", argv, self.pid_file, self.log_file)

    def wait_ready(self) -> None:
        """Wait until the broker answers a metadata request (not just until the JVM exists)."""
        deadline = time.monotonic() + self.timeout_s
        last = "port closed"
        while time.monotonic() < deadline:
            self._raise_if_exited()
            if not process.port_open("127.0.0.1", self.port):
                time.sleep(0.3)
                continue
            try:
                admin = self.admin()
                admin.list_topics()
                admin.close()
                return
            except Exception as e:  # kafka-python raises many kinds while the broker boots
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.5)
        self._raise_if_exited()
        raise StackError(
            "kafka:wait-ready",
            f"no metadata answer within {self.timeout_s:.0f} s "
            f"({last}); see {self.run_dir / 'logs' / 'server.log'}",
        )

    def _raise_if_exited(self) -> None:
        if self.pid() is None:
            raise StackError(
                "kafka:wait-ready",
                f"the broker process exited; {self.log_file} ends with:\n"
                + process.log_tail(self.log_file)
                + f"\nand {self.run_dir / 'logs' / 'server.log'} with:\n"
                + process.log_tail(self.run_dir / "logs" / "server.log"),
            )

    def admin(self):  # type: ignore[no-untyped-def]
        from kafka.admin import KafkaAdminClient

        return KafkaAdminClient(
            bootstrap_servers=self.bootstrap, client_id="accelpilot-stack", request_timeout_ms=5000
        )

    def stop(self) -> bool:
        return process.stop_pid(self.pid_file, timeout_s=30)

    def wipe(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)


def create_topics(bootstrap: str, names: Iterable[str], partitions: int) -> list[str]:
    """Create the topics that do not exist yet; return the ones created."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="accelpilot-topics", request_timeout_ms=10000
    )
    try:
        existing = set(admin.list_topics())
        wanted = [n for n in names if n not in existing]
        if not wanted:
            return []
        new = [NewTopic(name=n, num_partitions=partitions, replication_factor=1) for n in wanted]
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics(new_topics=new, validate_only=False)
        _await_leaders(admin, wanted, partitions)
        return wanted
    finally:
        admin.close()


def _await_leaders(
    admin: KafkaAdminClient, names: list[str], partitions: int, timeout_s: float = 30.0
) -> None:
    """Return once the broker serves every topic with a leader for each partition.

    CreateTopics answers before the broker's metadata cache has the new topics: a consumer
    group that joins in that gap is handed no partitions ("No partition metadata for topic")
    and, with nothing to retry, would wait for its next periodic metadata refresh to rejoin.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        described = admin.describe_topics(names)
        pending = [
            t["name"]
            for t in described
            if t["error_code"] != 0
            or len(t["partitions"]) < partitions
            or any(p["leader_id"] < 0 for p in t["partitions"])
        ]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise StackError(
                f"Kafka created topics {pending} but gave them no leader within {timeout_s:.0f} s; "
                "check the broker's logs/server.log under the stack's run_dir (default "
                "/tmp/accelpilot-stack/kafka)"
            )
        time.sleep(0.1)


def delete_topics(bootstrap: str, names: Iterable[str]) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="accelpilot-topics")
    try:
        existing = set(admin.list_topics())
        doomed = [n for n in names if n in existing]
        if doomed:
            admin.delete_topics(doomed)
    finally:
        admin.close()


def _random_cluster_id() -> str:
    import base64

    # Like Kafka's own Uuid.randomUuid: an id starting with "-" would be read as an option by
    # the storage tool's command line (`format -t -abc...` fails), so draw again.
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
