"""Publishing through the disk buffer.

The service test stops a real (isolated) Kafka broker for 60 s while three hosts keep sampling at
10 ticks/s, restarts it, and checks that every sample lands exactly once and in order per host,
that sampling never waited on the network, and that the health showed the backlog and its drain.
The fake-producer tests pin down retries, session changes and ``close`` without a broker.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from accelpilot.collectors.buffered_publisher import (
    BufferedPublisher,
    PublisherHealth,
    kafka_producer_factory,
)
from accelpilot.collectors.disk_buffer import DiskBuffer
from accelpilot.collectors.synthetic import synthetic_samples
from accelpilot.config import load_settings
from accelpilot.schemas import codec
from accelpilot.schemas.samples import HostSample
from tests.reaper import register_group

HOSTS = ("host-a", "host-b", "host-c")
TICK_S = 0.1
OUTAGE_S = 60.0


# -- fakes ----------------------------------------------------------------------------------------
class FakeError(Exception):
    retriable = True


class FakeFuture:
    def __init__(self) -> None:
        self._done = threading.Event()
        self._exc: BaseException | None = None

    @property
    def is_done(self) -> bool:
        return self._done.is_set()

    def resolve(self, exc: BaseException | None = None) -> FakeFuture:
        self._exc = exc
        self._done.set()
        return self

    def get(self, timeout: float | None = None) -> Any:
        if not self._done.wait(timeout):
            raise TimeoutError("not done")
        if self._exc is not None:
            raise self._exc
        return True


class FakeBroker:
    """A log per key, and a plan of which sends (numbered across sessions) go wrong."""

    def __init__(
        self,
        *,
        factory_failures: int = 0,
        fail_futures: frozenset[int] = frozenset(),
        raise_on_send: frozenset[int] = frozenset(),
        land_but_fail: frozenset[int] = frozenset(),
        never_ack: bool = False,
    ) -> None:
        self.logs: dict[bytes, list[bytes]] = defaultdict(list)
        self.factory_failures = factory_failures
        self.fail_futures = fail_futures
        self.raise_on_send = raise_on_send
        self.land_but_fail = land_but_fail
        self.never_ack = never_ack
        self.sends = 0
        self.sessions: list[FakeProducer] = []
        self.lock = threading.Lock()

    def factory(self) -> FakeProducer:
        if self.factory_failures > 0:
            self.factory_failures -= 1
            raise ConnectionError("no broker")
        producer = FakeProducer(self)
        self.sessions.append(producer)
        return producer


class FakeProducer:
    """Per key, like a partition: once a send of a session fails, the later sends of that key
    in the same session fail too (Kafka keeps a partition's batches in order)."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.broken_keys: set[bytes] = set()
        self.closed = False
        self.pending: list[FakeFuture] = []

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None, **kw: Any):
        assert key is not None and value is not None and "timestamp_ms" in kw
        b = self.broker
        with b.lock:
            n = b.sends
            b.sends += 1
            if n in b.raise_on_send:
                raise FakeError(f"metadata timeout on send #{n}")
            fut = FakeFuture()
            if b.never_ack:
                self.pending.append(fut)
                return fut
            if key in self.broken_keys or n in b.fail_futures:
                self.broken_keys.add(key)
                return fut.resolve(FakeError(f"send #{n} failed"))
            b.logs[key].append(value)
            if n in b.land_but_fail:  # written, but the acknowledgement never arrived
                self.broken_keys.add(key)
                return fut.resolve(FakeError(f"send #{n}: ack lost"))
            return fut.resolve()

    def close(self, timeout: float | None = None) -> None:
        self.closed = True
        for fut in self.pending:
            if not fut.is_done:
                fut.resolve(FakeError("producer closed"))


def _submit_all(pub: BufferedPublisher, n_per_host: int) -> float:
    worst = 0.0
    for seq in range(n_per_host):
        for host in HOSTS:
            t0 = time.perf_counter()
            pub.submit(host.encode(), f"{host}:{seq}".encode(), 1_000_000 * seq)
            worst = max(worst, time.perf_counter() - t0)
    return worst


def _wait_for(predicate: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _expected(n_per_host: int) -> dict[bytes, list[bytes]]:
    return {h.encode(): [f"{h}:{s}".encode() for s in range(n_per_host)] for h in HOSTS}


def test_fake_failures_lose_nothing_and_keep_order(tmp_path: Path) -> None:
    broker = FakeBroker(
        factory_failures=2,
        fail_futures=frozenset({5, 17, 40, 41, 90}),
        raise_on_send=frozenset({23, 60}),
    )
    with DiskBuffer(tmp_path, max_bytes=1 << 22) as buf:
        pub = BufferedPublisher(
            "unused:9092",
            "t",
            buf,
            producer_factory=broker.factory,
            retry_backoff_s=0.01,
            retry_backoff_max_s=0.05,
            batch_max_records=16,
        ).start()
        _submit_all(pub, 100)
        assert _wait_for(lambda: buf.depth == 0, 20)
        health = pub.health()
        pub.close(timeout_s=5)
    assert dict(broker.logs) == _expected(100)  # no loss, no duplicate, order per key
    assert health.sent_total == 300 and health.buffer_depth == 0
    assert health.send_errors_total >= 2 + 2  # two factory failures, two sync raises at least
    assert health.connected
    # Future failures ended their sessions; sync raises (nothing queued) did not.
    assert len(broker.sessions) >= 4
    assert all(p.closed for p in broker.sessions)


def test_lost_acknowledgement_is_the_documented_duplicate_window(tmp_path: Path) -> None:
    broker = FakeBroker(land_but_fail=frozenset({7}))
    with DiskBuffer(tmp_path, max_bytes=1 << 22) as buf:
        pub = BufferedPublisher(
            "unused:9092", "t", buf, producer_factory=broker.factory, retry_backoff_s=0.01
        ).start()
        _submit_all(pub, 10)
        assert _wait_for(lambda: buf.depth == 0, 20)
        pub.close(timeout_s=5)
    logs = dict(broker.logs)
    # Send #7 is host-b's seq 2 (sends go host-a, host-b, host-c per tick) when the first batch
    # holds everything; it lands twice, everything else exactly once and in order.
    dup_key = [k for k, v in logs.items() if len(v) != len(set(v))]
    assert len(dup_key) == 1
    k = dup_key[0]
    assert sorted(set(logs[k])) == sorted(_expected(10)[k])
    assert len(logs[k]) == 11
    for other in set(logs) - {k}:
        assert logs[other] == _expected(10)[other]


def test_close_leaves_unacknowledged_records_on_disk_for_the_next_start(tmp_path: Path) -> None:
    stuck = FakeBroker(never_ack=True)
    with DiskBuffer(tmp_path, max_bytes=1 << 22) as buf:
        pub = BufferedPublisher(
            "unused:9092", "t", buf, producer_factory=stuck.factory, stall_s=0.2
        ).start()
        _submit_all(pub, 7)
        assert _wait_for(lambda: stuck.sends >= 1, 5)
        time.sleep(0.3)
        assert not pub.health().connected  # acknowledgements overdue
        t0 = time.monotonic()
        pub.close(timeout_s=1.0)
        assert time.monotonic() - t0 < 3.0
        assert buf.depth == 21
        assert stuck.sessions[0].closed
    good = FakeBroker()
    with DiskBuffer(tmp_path, max_bytes=1 << 22) as buf:
        assert buf.depth == 21
        with BufferedPublisher("unused:9092", "t", buf, producer_factory=good.factory):
            assert _wait_for(lambda: buf.depth == 0, 10)
    assert dict(good.logs) == _expected(7)


def test_submit_never_waits_for_the_network(tmp_path: Path) -> None:
    gate = threading.Event()

    class HangingProducer(FakeProducer):
        def send(self, *a: Any, **kw: Any):  # a send stuck in the network for a long time
            gate.wait(30)
            return super().send(*a, **kw)

    broker = FakeBroker()
    with DiskBuffer(tmp_path, max_bytes=1 << 22) as buf:
        pub = BufferedPublisher(
            "unused:9092", "t", buf, producer_factory=lambda: HangingProducer(broker)
        ).start()
        worst = _submit_all(pub, 300)
        assert worst < 0.05
        assert buf.depth == 900
        gate.set()
        assert _wait_for(lambda: buf.depth == 0, 20)
        pub.close(timeout_s=5)
    assert dict(broker.logs) == _expected(300)


def test_a_record_kafka_would_refuse_is_refused_at_submit(tmp_path: Path) -> None:
    broker = FakeBroker()
    with DiskBuffer(tmp_path, max_bytes=1 << 24) as buf:
        pub = BufferedPublisher("unused:9092", "t", buf, producer_factory=broker.factory)
        with pytest.raises(ValueError, match="max_record_bytes"):
            pub.submit(b"host-a", b"x" * 1_000_001, 1)
        assert buf.depth == 0


# -- the real broker ------------------------------------------------------------------------------
def _free_port_pair() -> int:
    """A port p with p+1 also free (broker and controller listeners)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port >= 65535:
            continue
        try:
            with socket.socket() as s2:
                s2.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free pair of ports")


class _Ticker(threading.Thread):
    """The sampling loop: every 100 ms one encoded HostSample per host, through submit()."""

    def __init__(self, pub: BufferedPublisher) -> None:
        super().__init__(name="ticker", daemon=True)
        self.pub = pub
        self.stop_event = threading.Event()
        self.submitted: dict[str, int] = dict.fromkeys(HOSTS, 0)
        self.max_submit_s = 0.0
        self.late_ticks = 0
        start_ns = time.time_ns()
        self._gens: dict[str, Iterator[HostSample]] = {
            h: synthetic_samples(
                h, n_devices=8, n_ticks=1_000_000, start_ns=start_ns, interval_s=TICK_S, seed=i
            )
            for i, h in enumerate(HOSTS)
        }

    def run(self) -> None:
        next_t = time.monotonic()
        while not self.stop_event.is_set():
            for host in HOSTS:
                sample = next(self._gens[host])
                payload = codec.encode(sample)
                t0 = time.perf_counter()
                self.pub.submit(host.encode(), payload, sample.ts_ns)
                self.max_submit_s = max(self.max_submit_s, time.perf_counter() - t0)
                self.submitted[host] += 1
            next_t += TICK_S
            delay = next_t - time.monotonic()
            if delay < 0:
                self.late_ticks += 1
                next_t = time.monotonic()
            self.stop_event.wait(max(0.0, delay))


class _Monitor(threading.Thread):
    def __init__(self, pub: BufferedPublisher) -> None:
        super().__init__(name="monitor", daemon=True)
        self.pub = pub
        self.stop_event = threading.Event()
        self.phase = "before"
        self.seen: list[tuple[float, str, PublisherHealth]] = []

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.seen.append((time.monotonic(), self.phase, self.pub.health()))
            self.stop_event.wait(0.2)


def _consume_all(bootstrap: str, topic: str) -> tuple[int, list[tuple[int, bytes, bytes]]]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, client_id="check"
    )
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        out: list[tuple[int, bytes, bytes]] = []
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            assert time.monotonic() < deadline, "could not read the topic back in 60 s"
            for tp, msgs in consumer.poll(timeout_ms=500).items():
                out += [(tp.partition, m.key, m.value) for m in msgs]
        return sum(ends.values()), out
    finally:
        consumer.close()


@pytest.mark.service
@pytest.mark.slow
def test_broker_outage_every_sample_arrives_once_and_in_order(tmp_path: Path) -> None:
    from accelpilot.stack.kafka import KafkaBroker, create_topics

    port = _free_port_pair()
    settings = load_settings(
        kafka={"bootstrap_servers": f"127.0.0.1:{port}", "partitions": 3},
        stack={
            "run_dir": str(tmp_path / "run"),
            "kafka_port": port,
            "kafka_controller_port": port + 1,
            "start_timeout_s": 120,
        },
    )
    broker = KafkaBroker(settings)  # jars from the shared cache; state in this test's tmp dir
    bootstrap, topic = broker.bootstrap, "telemetry.samples"
    broker.fetch_jars()
    broker.prepare()
    broker.start()
    register_group(broker.pid())  # its own session: reaped if the test session dies
    buf = DiskBuffer(tmp_path / "buffer", max_bytes=256 << 20)
    pub = BufferedPublisher(bootstrap, topic, buf, client_id="outage-test", retry_backoff_max_s=2.0)
    ticker, monitor = _Ticker(pub), _Monitor(pub)
    try:
        broker.wait_ready()
        create_topics(bootstrap, [topic], partitions=3)
        producer: Any = kafka_producer_factory(bootstrap, "config-check")()
        config = dict(producer.config)
        producer.close(timeout=5)
        pub.start()
        assert _wait_for(lambda: pub.health().connected, 30)
        ticker.start()
        monitor.start()
        time.sleep(6)

        monitor.phase = "outage"
        t_down = time.monotonic()
        assert broker.stop()
        cpu0 = time.process_time()
        time.sleep(OUTAGE_S)
        outage_cpu_s = time.process_time() - cpu0
        broker.start()
        register_group(broker.pid())
        broker.wait_ready()
        t_up = time.monotonic()
        monitor.phase = "after"
        assert _wait_for(lambda: buf.depth <= len(HOSTS), 90), "the backlog did not drain"
        drain_s = time.monotonic() - t_up
        time.sleep(5)

        ticker.stop_event.set()
        ticker.join(5)
        assert _wait_for(lambda: buf.depth == 0, 30)
        final = pub.health()
        monitor.stop_event.set()
        monitor.join(5)
        pub.close(timeout_s=10)

        total, messages = _consume_all(bootstrap, topic)
    finally:
        ticker.stop_event.set()
        monitor.stop_event.set()
        pub.close(timeout_s=1)
        buf.close()
        broker.stop()

    submitted = sum(ticker.submitted.values())
    outage = [h for _, phase, h in monitor.seen if phase == "outage"]
    peak_depth = max(h.buffer_depth for h in outage)
    print(
        f"\noutage test: {submitted} samples ({len(HOSTS)} hosts x {TICK_S:.1f} s ticks), "
        f"broker down {t_up - t_down:.1f} s, max submit {1000 * ticker.max_submit_s:.2f} ms, "
        f"peak depth {peak_depth}, drained {drain_s:.1f} s after the broker answered, "
        f"late ticks {ticker.late_ticks}, send errors {final.send_errors_total}, "
        f"agent CPU while the broker was down {outage_cpu_s:.2f} s / {OUTAGE_S:.0f} s"
    )

    # The producer is what the issue asks for.
    assert config["acks"] == -1 and config["enable_idempotence"]
    assert config["compression_type"] in ("gzip", "lz4")
    assert config["max_in_flight_requests_per_connection"] == 1

    # Every (host, seq) exactly once, nothing missing, in seq order, one partition per host.
    assert total == submitted == len(messages), "the log holds duplicates or misses samples"
    by_host: dict[str, list[int]] = defaultdict(list)
    partitions: dict[str, set[int]] = defaultdict(set)
    for partition, key, value in messages:
        sample = codec.decode(HostSample, value)
        assert key == sample.host_id.encode()
        by_host[sample.host_id].append(sample.seq)
        partitions[sample.host_id].add(partition)
    for host in HOSTS:
        assert by_host[host] == list(range(ticker.submitted[host])), host
        assert len(partitions[host]) == 1

    # Sampling never waited on the network (a behavioural bound, not a benchmark).
    assert ticker.max_submit_s < 0.05

    # The health told the story: a growing backlog while down, and back to nothing.
    assert peak_depth >= 0.8 * len(HOSTS) * OUTAGE_S / TICK_S
    assert any(not h.connected for h in outage)
    oldest = [h.oldest_buffered_ts_ns for h in outage if h.buffer_depth > 100]
    assert oldest and all(o is not None for o in oldest)
    assert final.buffer_depth == 0 and final.oldest_buffered_ts_ns is None
    assert final.dropped_total == 0
    assert final.sent_total == submitted
    assert final.connected

    # No busy loop while the broker is away (kafka-python 3.0.x spins a core without the
    # workaround in buffered_publisher: ~57 s of CPU in these 60 s).
    assert outage_cpu_s < 0.25 * OUTAGE_S
