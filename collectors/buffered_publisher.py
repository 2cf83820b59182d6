"""Publish samples through the disk buffer: sampling appends to disk, one sender thread talks
to Kafka, in log order, and commits the buffer's cursor only after the broker acknowledged.

Delivery guarantees, exactly as implemented:

* **No loss** short of the buffer's bound: a record leaves the disk buffer only after Kafka
  acknowledged it with ``acks=all``. Records dropped because the bound was hit are counted in
  ``dropped_total`` (oldest first). A record Kafka refuses for good is retried with backoff, never
  skipped; it blocks the records behind it and the health shows it (``connected`` false, errors
  rising).
* **Order per key**: one sender, batches peeked in log order, ``max_in_flight=1`` plus the
  idempotent producer's per-partition sequence numbers, so a retried batch can neither overtake
  nor be overtaken by a later one of the same partition.
* **Exactly once within one producer session**, which is what an outage is: the producer's
  ``delivery_timeout_ms`` is effectively infinite, so while the broker is away the SAME batch
  stays inside the same idempotent producer (same producer id, epoch and sequence numbers) and
  kafka-python retries it by itself; whatever reached the log before the broker died is
  recognised by the broker as a duplicate sequence and not written twice (the broker keeps the
  producer state across its own restart). The application never re-sends into a live session, so
  sending into a dead connection is harmless and needs no reachability probe.
* **Duplicate windows** (at least once, never loss), each needing a new producer session:

  1. the process stops (crash, kill, or ``close`` whose timeout expired) after the broker
     appended records but before their acknowledgement was committed to disk: the next start
     re-sends them under a new producer id (at most one batch: 500 records / 512 KiB);
  2. a future fails for good inside a session (a non-retriable broker error such as
     ``OutOfOrderSequenceNumber`` after broker-side data loss, or an authorization error): the
     session is discarded and the unacknowledged part of the batch re-sent under a new producer
     id. Records the broker appended without the client seeing the acknowledgement duplicate;
     records of the batch that WERE acknowledged are remembered and not re-sent. In this window
     the re-sent record can also land after a later record of the same key that was already
     acknowledged (kafka-python drains queued records under the bumped epoch before we react);
  3. the broker forgets the producer's state while a batch is unacknowledged: its data was
     wiped, or the outage outlasted ``producer.id.expiration.ms`` (1 day by default).

  Only a clean broker stop (SIGTERM) is covered by the service test; after a SIGKILL the broker
  rebuilds producer state from its log, which should de-duplicate the same way (untested here).

  Downstream sinks are idempotent (InfluxDB points are keyed by series + timestamp), so these
  windows cost nothing but a repeated write.

``health()`` reports the buffer depth, the oldest buffered ``ts_ns``, drops, records sent, failed
send attempts and whether the broker currently acknowledges.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from accelpilot.collectors.disk_buffer import DiskBuffer, Record

log = logging.getLogger(__name__)

# kafka-python's batches expire after delivery_timeout_ms; an expired batch that was already sent
# makes the producer reset its id, and a re-send then may duplicate. ~24.8 days: never, in practice.
DELIVERY_FOREVER_MS = 2**31 - 1


class SendFuture(Protocol):
    """What ``producer.send`` returns (kafka-python's ``FutureRecordMetadata``)."""

    @property
    def is_done(self) -> bool: ...

    def get(self, timeout: float | None = None) -> Any: ...


class Producer(Protocol):
    """The part of kafka-python's ``KafkaProducer`` this module uses."""

    def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, **kw: Any
    ) -> SendFuture: ...

    def close(self, timeout: float | None = None) -> None: ...


ProducerFactory = Callable[[], Producer]


@dataclass(frozen=True, slots=True)
class PublisherHealth:
    buffer_depth: int  # records on disk not yet acknowledged
    oldest_buffered_ts_ns: int | None  # ts_ns of the oldest of them
    dropped_total: int  # records dropped unsent because the buffer's bound was hit
    sent_total: int  # records acknowledged by Kafka (this process)
    send_errors_total: int  # failed attempts: no producer, send() raised, or a record failed
    connected: bool  # the broker acknowledges: last attempt succeeded, nothing waits too long


def kafka_producer_factory(bootstrap_servers: str, client_id: str) -> ProducerFactory:
    """A factory of kafka-python producers set up for ordered, idempotent, lossless delivery.

    ``max_in_flight_requests_per_connection=1``: kafka-python 3 mutes a partition while its
    batch is in flight whenever idempotence is on, so up to 5 would buy no pipelining per
    partition; older 2.x releases (allowed by our pin) only keep order on retry with 1. One
    agent's rate (tens of samples/s, ~1-2 KB each) and a replay of 256 KiB batches per partition
    per request need no more.
    """

    def make() -> Producer:
        from kafka import KafkaProducer
        from kafka.codec import has_lz4

        tuning = {
            "linger_ms": 5,
            "batch_size": 256 * 1024,
            "delivery_timeout_ms": DELIVERY_FOREVER_MS,
            "request_timeout_ms": 30_000,
            # send() blocks only for metadata; keep it short so close() stays prompt.
            "max_block_ms": 5_000,
            "bootstrap_timeout_ms": 5_000,
            # Reconnect within a second after an outage (the default backs off to 30 s).
            "reconnect_backoff_max_ms": 1_000,
        }
        known = KafkaProducer.DEFAULT_CONFIG
        producer: Producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            compression_type="lz4" if has_lz4() else "gzip",
            max_in_flight_requests_per_connection=1,
            **{k: v for k, v in tuning.items() if k in known},
        )
        _tame_kafka_python_3_0(producer)
        return producer

    return make


def _tame_kafka_python_3_0(producer: Any) -> None:
    """Work around two busy loops of kafka-python 3.0.x (checked on 3.0.12) while the broker is
    down, on this producer's own objects only (nothing global; skipped on other versions or if
    the internals moved). Unpatched, its I/O thread burned ~95% of a core during an outage and
    the GIL convoy delayed the sampling thread's ``submit`` by up to 30-45 ms.

    1. The sender reads ``client.connection_delay()`` as milliseconds (``producer/sender.py``)
       but the new network layer returns seconds (``net/manager.py``; ``cluster.py`` multiplies
       by 1000), so it polled with ~1 ms timeouts: scale it to milliseconds.
    2. With a partition leader unknown, every sender loop calls ``cluster.request_update()``,
       which always wakes the I/O loop, which returns at once to the sender: call through only
       when no update is already pending (the refresh loop already knows; it keeps its backoff).
    """
    import kafka

    if not str(getattr(kafka, "__version__", "")).startswith("3.0."):
        return
    sender = getattr(producer, "_sender", None)
    client = getattr(sender, "_client", None)
    seconds = getattr(getattr(client, "_manager", None), "connection_delay", None)
    if client is not None and seconds is not None:

        def connection_delay_ms(node_id: Any) -> float:
            return 1000.0 * float(seconds(node_id))

        client.connection_delay = connection_delay_ms

    cluster = getattr(sender, "_metadata", None)
    request_update = getattr(cluster, "request_update", None)
    if cluster is None or request_update is None or not hasattr(cluster, "_need_update"):
        return

    def request_update_once() -> Any:
        pending = getattr(cluster, "_future", None)
        if cluster._need_update and pending is not None and not pending.is_done:
            return pending
        return request_update()

    cluster.request_update = request_update_once


def close_producer(producer: Producer, timeout_s: float) -> None:
    """Close a producer within ``timeout_s``, abandoning what is still unacknowledged.

    kafka-python 3's ``close(timeout)`` flushes first and raises ``KafkaTimeoutError`` when that
    does not finish in time, leaving its I/O thread running (and re-sending behind our back);
    then force-close that thread so the abandoned records really stay abandoned.
    """
    try:
        producer.close(timeout=max(0.0, timeout_s))
        return
    except Exception as e:
        log.info("producer did not close in %.1f s (%s); forcing it", timeout_s, e)
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()
        sender.join(5.0)
    try:
        producer.close(timeout=0)
    except Exception as e:
        log.warning("producer force-close left an error: %s", e)


class _Outcome(enum.Enum):
    IDLE = "idle"
    SENT = "sent"
    FAILED = "failed"
    ABANDONED = "abandoned"


class BufferedPublisher:
    """``submit`` appends to the disk buffer; a background thread ships the buffer to Kafka.

    Validate in ``__init__``, connect in ``start`` (or ``with``); ``close`` flushes within a
    timeout and leaves the rest on disk for the next start.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        buffer: DiskBuffer,
        *,
        client_id: str = "accelpilot-agent",
        producer_factory: ProducerFactory | None = None,
        retry_backoff_s: float = 0.2,
        retry_backoff_max_s: float = 5.0,
        batch_max_records: int = 500,
        batch_max_bytes: int = 512 * 1024,
        stall_s: float = 3.0,
        idle_poll_s: float = 0.5,
        max_record_bytes: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not topic:
            raise ValueError("topic must not be empty")
        if not 0 < retry_backoff_s <= retry_backoff_max_s:
            raise ValueError("need 0 < retry_backoff_s <= retry_backoff_max_s")
        if batch_max_records < 1 or batch_max_bytes < 1:
            raise ValueError("batch limits must be positive")
        self.topic = topic
        self.buffer = buffer
        self._factory = producer_factory or kafka_producer_factory(bootstrap_servers, client_id)
        self._backoff_min = retry_backoff_s
        self._backoff_max = retry_backoff_max_s
        self._batch_records = batch_max_records
        self._batch_bytes = batch_max_bytes
        self._stall_s = stall_s
        self._idle_poll_s = idle_poll_s
        self._max_record_bytes = max_record_bytes
        self._clock = clock
        self._producer: Producer | None = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()  # set by submit: there is something to send
        self._closing = threading.Event()  # set by close: cut pauses short
        self._deadline = float("inf")
        # Positions of records acknowledged but not yet committable (an earlier one failed).
        self._acked: set[tuple[int, int]] = set()
        self._sent_total = 0
        self._send_errors_total = 0
        self._connected = False
        self._waiting_since: float | None = None

    # -- the sampling side (never touches the network) ----------------------------------------
    def submit(self, key: bytes, value: bytes, ts_ns: int) -> None:
        """Append one record to the disk buffer and wake the sender; returns in microseconds.

        Raises ``ValueError`` for a record Kafka would never take (over ``max_record_bytes``,
        below the producer's 1 MiB request limit) instead of letting it block the buffer, and
        :class:`~accelpilot.collectors.disk_buffer.DiskBufferError` if the disk fails.
        """
        if len(key) + len(value) > self._max_record_bytes:
            raise ValueError(
                f"record of {len(key) + len(value)} bytes exceeds max_record_bytes="
                f"{self._max_record_bytes}; Kafka would refuse it"
            )
        self.buffer.append(key, value, ts_ns)
        self._wake.set()

    def health(self) -> PublisherHealth:
        connected = self._connected
        since = self._waiting_since
        if since is not None and self._clock() - since > self._stall_s:
            connected = False
        return PublisherHealth(
            buffer_depth=self.buffer.depth,
            oldest_buffered_ts_ns=self.buffer.oldest_ts_ns,
            dropped_total=self.buffer.dropped_total,
            sent_total=self._sent_total,
            send_errors_total=self._send_errors_total,
            connected=connected,
        )

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> BufferedPublisher:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"publisher:{self.topic}", daemon=True
            )
            self._thread.start()
        return self

    def close(self, timeout_s: float = 10.0) -> None:
        """Send what the broker takes within ``timeout_s``, then stop; the rest stays on disk.

        May overrun by the producer's connect timeout (5 s) if it is connecting right then.
        """
        self._deadline = self._clock() + timeout_s
        self._closing.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s + 10.0)
            if self._thread.is_alive():
                log.error("publisher thread did not stop within %.1f s", timeout_s + 10.0)
            self._thread = None
        elif self._producer is not None:
            self._drop_producer(0.0)

    def __enter__(self) -> BufferedPublisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the sender thread --------------------------------------------------------------------
    def _run(self) -> None:
        delay = self._backoff_min
        while True:
            if self._closing.is_set() and (
                self.buffer.depth == 0 or self._clock() >= self._deadline
            ):
                break
            try:
                outcome = self._cycle()
            except Exception:  # never let the sender die: log, count, start a new session
                log.exception("publisher: unexpected error; retrying with a new producer")
                self._drop_producer(0.0)
                outcome = _Outcome.FAILED
            if outcome is _Outcome.ABANDONED:
                break
            if outcome is _Outcome.IDLE:
                if self._closing.is_set():
                    break
                self._wake.wait(self._idle_poll_s)
            elif outcome is _Outcome.SENT:
                delay = self._backoff_min
            else:
                self._send_errors_total += 1
                self._connected = False
                self._closing.wait(max(0.0, min(delay, self._deadline - self._clock())))
                delay = min(delay * 2, self._backoff_max)
        remaining = self._deadline - self._clock() if self._closing.is_set() else 0.0
        self._drop_producer(remaining)

    def _cycle(self) -> _Outcome:
        if self._producer is None:
            try:
                self._producer = self._factory()
            except Exception as e:
                log.warning("publisher: cannot create a Kafka producer: %s", e)
                return _Outcome.FAILED
            self._connected = True  # it bootstrapped: the broker answered
        self._wake.clear()  # a submit from now on wakes the next idle wait
        records = self.buffer.peek(self._batch_records, self._batch_bytes)
        if not records:
            return _Outcome.IDLE
        return self._deliver(self._producer, records)

    def _deliver(self, producer: Producer, records: list[Record]) -> _Outcome:
        positions = {r.position for r in records}
        self._acked &= positions  # forget records the bound dropped meanwhile
        futures: list[tuple[Record, SendFuture]] = []
        error: BaseException | None = None
        keep_session = True
        for r in records:
            if r.position in self._acked:
                continue  # acknowledged in an earlier attempt: never send it twice
            try:
                fut = producer.send(
                    self.topic, key=r.key, value=r.value, timestamp_ms=r.ts_ns // 1_000_000
                )
            except Exception as e:
                # send() raised before queueing the record: retrying it in this same session is
                # safe; only a non-retriable error (closed or broken producer) ends the session.
                error = e
                keep_session = bool(getattr(e, "retriable", False))
                break
            futures.append((r, fut))
        self._waiting_since = self._clock()
        abandoned = False
        try:
            for r, fut in futures:
                if not abandoned and not self._wait(fut):
                    abandoned = True
                if not fut.is_done:
                    continue
                try:
                    fut.get(timeout=0)
                except Exception as e:
                    error = error or e
                    keep_session = False  # the session's sequence state is now uncertain
                    continue
                self._acked.add(r.position)
                self._sent_total += 1
        finally:
            self._waiting_since = None
        done = 0
        for r in records:
            if r.position not in self._acked:
                break
            done += 1
        if error is None and not abandoned:
            self._connected = True  # before the commit: health never shows drained + offline
        if done:
            self.buffer.commit(done)
            self._acked.difference_update(r.position for r in records[:done])
        if abandoned:
            return _Outcome.ABANDONED
        if error is not None:
            log.warning(
                "publisher: %d of %d records not acknowledged (%s: %s); retrying%s",
                len(records) - done,
                len(records),
                type(error).__name__,
                error,
                "" if keep_session else " with a new producer",
            )
            if not keep_session:
                self._drop_producer(0.0)
            return _Outcome.FAILED
        return _Outcome.SENT

    def _wait(self, fut: SendFuture) -> bool:
        """Wait for one future; False if ``close``'s deadline passed first."""
        while not fut.is_done:
            if self._closing.is_set() and self._clock() >= self._deadline:
                return False
            # Done with an error (read by the caller) or not done yet: look again.
            with contextlib.suppress(Exception):
                fut.get(timeout=0.2)
        return True

    def _drop_producer(self, timeout_s: float) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            close_producer(producer, timeout_s)
