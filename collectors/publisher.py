"""Publish payloads to Kafka with kafka-python: acks=all, idempotent, compressed, keyed by host."""

from __future__ import annotations

from types import TracebackType

import msgspec

from accelpilot.errors import ServiceUnavailableError
from accelpilot.schemas import codec


class KafkaPublisher:
    def __init__(
        self, bootstrap_servers: str, topic: str, *, client_id: str = "accelpilot"
    ) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        try:
            self._producer = KafkaProducer(
                bootstrap_servers=bootstrap_servers,
                client_id=client_id,
                acks="all",
                enable_idempotence=True,
                compression_type="gzip",
                linger_ms=5,
                max_in_flight_requests_per_connection=5,
            )
        except KafkaError as e:
            raise ServiceUnavailableError.kafka(bootstrap_servers, e) from e
        self.topic = topic

    def send(self, key: str, payload: msgspec.Struct) -> None:
        self.send_raw(key.encode(), codec.encode(payload))

    def send_raw(self, key: bytes | None, value: bytes) -> None:
        self._producer.send(self.topic, key=key, value=value)

    def flush(self, timeout_s: float = 30.0) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self) -> None:
        self._producer.close()

    def __enter__(self) -> KafkaPublisher:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if et is None:
            self.flush()
        self.close()
