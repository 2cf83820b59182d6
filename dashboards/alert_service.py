"""The alert-subscription service: consume ``fleet.alerts``, queue durably, deliver.

At least once from Kafka to the queue: a batch of records is decoded and offered to the
:class:`~accelpilot.dashboards.notify.Notifier` (one SQLite transaction), and only then are the
consumer offsets committed. A crash in between replays the batch; the notifier's de-duplication
(subscription, alert id, state) keeps a replayed alert from being sent twice. A payload that does
not decode is logged, counted and skipped (nothing could deliver it); with ``dlq_topic`` it is
also published there as a ``telemetry.dlq`` record.

With ``grafana_listen`` it also receives Grafana's unified-alerting webhook notifications over
HTTP (:mod:`accelpilot.dashboards.grafana_webhook`) and queues them into the same store, so they
take the same way to the subscriptions: filters, grouping, rate limits, retries, dead letters.

One service per store file. Stop it with ``stop.set()`` or SIGTERM/SIGINT (main thread only).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from accelpilot.dashboards.grafana_webhook import GrafanaWebhookServer
from accelpilot.dashboards.notify import (
    HttpPost,
    Notifier,
    OfferReport,
    RetryPolicy,
    SmtpFactory,
    smtp_connect,
    urllib_post,
)
from accelpilot.dashboards.subscriptions import SubscriptionStore
from accelpilot.errors import SchemaError, ServiceUnavailableError
from accelpilot.schemas import codec
from accelpilot.schemas.alerts import Alert
from accelpilot.schemas.dlq import DeadLetter
from accelpilot.schemas.topics import GROUP_METADATA_MAX_AGE_MS

log = logging.getLogger(__name__)


@dataclass(slots=True)
class AlertServiceStats:
    """Running totals; pass one in to watch a service from another thread."""

    consumed: int = 0  # records read from the topic
    bad_payloads: int = 0  # records that did not decode (skipped)
    queued: int = 0  # (alert, subscription) pairs queued for delivery
    duplicates: int = 0  # pairs already queued before (replays)
    unmatched: int = 0  # alerts no subscription selects
    sent: int = 0  # messages delivered
    failed_attempts: int = 0  # sends that failed and will be retried
    dead: int = 0  # messages given up on (dead letters)
    rate_limited: int = 0  # sends held back by a rate limit
    grafana_alerts: int = 0  # alerts received from Grafana's webhook
    grafana_queued: int = 0  # (Grafana alert, subscription) pairs queued for delivery
    grafana_rejected: int = 0  # webhook requests refused as not Grafana's shape
    grafana_url: str = ""  # where Grafana's webhook is received ("" = not listening)


def run_alert_service(
    bootstrap: str,
    topic: str,
    store_path: Path | str,
    *,
    group_id: str = "accelpilot-alerts",
    from_beginning: bool = False,
    stop: threading.Event | None = None,
    retry: RetryPolicy = RetryPolicy(),
    http_post: HttpPost = urllib_post,
    smtp_factory: SmtpFactory = smtp_connect,
    http_timeout_s: float = 10.0,
    smtp_timeout_s: float = 10.0,
    dedup_ttl_s: float = 7 * 86400.0,
    clock: Callable[[], float] = time.time,
    poll_max_s: float = 0.5,
    dlq_topic: str | None = None,
    stats: AlertServiceStats | None = None,
    install_signal_handlers: bool | None = None,
    client_id: str = "accelpilot-alerts",
    grafana_listen: tuple[str, int] | None = None,
    grafana_path: str = "/grafana",
    grafana_token: str | None = None,
) -> AlertServiceStats:
    """Run until ``stop`` is set (or SIGTERM/SIGINT); return the totals.

    ``from_beginning``: where a consumer group with no committed offset starts (the oldest
    retained alert, or only new ones). ``install_signal_handlers`` defaults to "when called on
    the main thread". ``grafana_listen``: ``(host, port)`` of the Grafana webhook endpoint
    (port 0: any free port; ``stats.grafana_url`` says which), ``None`` for none.
    """
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.errors import CommitFailedError, KafkaError

    stop = stop or threading.Event()
    stats = stats if stats is not None else AlertServiceStats()
    if install_signal_handlers is None:
        install_signal_handlers = threading.current_thread() is threading.main_thread()
    restore = _install_signals(stop) if install_signal_handlers else {}

    store = SubscriptionStore(store_path)
    notifier = Notifier(
        store,
        clock=clock,
        http_post=http_post,
        smtp_factory=smtp_factory,
        retry=retry,
        http_timeout_s=http_timeout_s,
        smtp_timeout_s=smtp_timeout_s,
        dedup_ttl_s=dedup_ttl_s,
    )
    try:
        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group_id,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if from_beginning else "latest",
            max_poll_records=500,
            metadata_max_age_ms=GROUP_METADATA_MAX_AGE_MS,
        )
        producer = (
            KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
            if dlq_topic
            else None
        )
    except KafkaError as e:
        store.close()
        raise ServiceUnavailableError.kafka(bootstrap, e) from e
    log.info("alert service: %s -> %s (group %s)", topic, store.path, group_id)
    grafana = None
    try:
        if grafana_listen is not None:
            grafana = _start_grafana_receiver(
                store.path, grafana_listen, grafana_path, grafana_token, clock, stats
            )
        while not stop.is_set():
            due = notifier.next_due_ts()
            wait_s = poll_max_s if due is None else min(poll_max_s, max(0.0, due - clock()))
            batch = consumer.poll(timeout_ms=int(wait_s * 1000))
            if batch:
                alerts = _decode_batch(batch, stats, producer, dlq_topic)
                offered = notifier.offer_many(alerts)
                stats.queued += offered.queued
                stats.duplicates += offered.duplicates
                stats.unmatched += offered.unmatched
                if producer is not None:
                    producer.flush()
                try:
                    consumer.commit()  # only now: the alerts are durable in the queue
                except CommitFailedError as e:  # a rebalance; the replay is de-duplicated
                    log.warning("offset commit failed, the batch will be replayed: %s", e)
            pumped = notifier.pump()
            stats.sent += pumped.sent
            stats.failed_attempts += pumped.failed
            stats.dead += pumped.dead
            stats.rate_limited += pumped.rate_limited
    finally:
        if grafana is not None:
            grafana.stop()
        consumer.close()
        if producer is not None:
            producer.close()
        store.close()
        for sig, handler in restore.items():
            signal.signal(sig, handler)
    log.info("alert service stopped: %s", stats)
    return stats


def _start_grafana_receiver(
    store_path: Path,
    listen: tuple[str, int],
    path: str,
    token: str | None,
    clock: Callable[[], float],
    stats: AlertServiceStats,
) -> GrafanaWebhookServer:
    def count(received: int, report: OfferReport | None) -> None:
        if report is None:
            stats.grafana_rejected += 1
            return
        # Counted apart from the consumer's totals: this runs on the receiver's own thread.
        stats.grafana_alerts += received
        stats.grafana_queued += report.queued

    server = GrafanaWebhookServer(
        store_path, listen[0], listen[1], path=path, token=token, clock=clock, on_offer=count
    )
    server.start()
    stats.grafana_url = server.url
    return server


def _decode_batch(
    batch: dict[Any, list[Any]],
    stats: AlertServiceStats,
    producer: Any,
    dlq_topic: str | None,
) -> list[Alert]:
    alerts = []
    for records in batch.values():
        for record in records:
            stats.consumed += 1
            try:
                alerts.append(codec.decode(Alert, record.value or b""))  # None: a tombstone
            except SchemaError as e:
                stats.bad_payloads += 1
                log.warning(
                    "skipping undeliverable alert at %s[%d]@%d: %s",
                    record.topic,
                    record.partition,
                    record.offset,
                    e,
                )
                if producer is not None and dlq_topic:
                    letter = DeadLetter(
                        source_topic=record.topic,
                        partition=record.partition,
                        offset=record.offset,
                        key=record.key,
                        original=record.value or b"",
                        reason=e.reason,
                        detail=e.detail[:2000],
                        rejected_ts_ns=time.time_ns(),
                        stage="alert-subscriptions",
                    )
                    producer.send(dlq_topic, key=record.key, value=codec.encode(letter))
    return alerts


def _install_signals(stop: threading.Event) -> dict[int, Any]:
    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping the alert service", signum)
        stop.set()

    previous: dict[int, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.getsignal(sig)
        signal.signal(sig, handler)
    return previous
