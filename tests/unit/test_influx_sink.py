"""What the InfluxDB sink does with each kind of failure (pure part; the real server's answers are
exercised in tests/service/test_influx_sink.py), and the dead letter of a refused line."""

from __future__ import annotations

import pytest

from accelpilot.schemas import DeadLetter, codec
from accelpilot.streams.dead_letters import rejected_line_letter
from accelpilot.streams.influx_sink import (
    OTHER_REJECTION,
    REJECTION_REASONS,
    TOO_LARGE,
    RejectedLine,
    classify,
    dropped_count,
)

# InfluxDB 1.12's own answers (captured from the real server).
CONFLICT = (
    'partial write: field type conflict: input field "power_w" on measurement "device_sample" '
    "is type integer, already exists as type float dropped=3 for database: d for retention "
    "policy: autogen"
)
UNPARSABLE = "partial write: unable to parse 'm,h=a x=1.0 17a': bad timestamp dropped=0"


@pytest.mark.parametrize(
    ("status", "error", "action", "reason"),
    [
        (None, "ClientConnectorError: Cannot connect to host", "retry", "wait for InfluxDB"),
        (500, "timeout", "retry", "wait for InfluxDB"),
        (503, "", "retry", "wait for InfluxDB"),
        (429, "too many requests", "retry", "InfluxDB is throttling writes"),
        (401, "authorization failed", "retry", "check influx.token"),
        (403, "forbidden", "retry", "check influx.token"),
        (404, 'database not found: "x"', "retry", "create the database"),
        (400, CONFLICT, "reject", "influx-field-type-conflict"),
        (422, "failure writing points: " + CONFLICT, "reject", "influx-field-type-conflict"),
        (400, UNPARSABLE, "reject", "influx-unparsable"),
        (
            400,
            "partial write: points beyond retention policy dropped=1",
            "reject",
            "influx-beyond-retention",
        ),
        (
            400,
            "partial write: max-series-per-database limit exceeded: (10) dropped=1",
            "reject",
            "influx-limit-exceeded",
        ),
        (413, "Request Entity Too Large", "reject", "influx-too-large"),
        (400, "something new", "reject", "influx-rejected"),
    ],
)
def test_classify(status: int | None, error: str, action: str, reason: str) -> None:
    verdict = classify(status, error)
    assert (verdict.action, verdict.reason) == (action, reason)


def test_dropped_count() -> None:
    assert dropped_count(CONFLICT) == 3
    assert dropped_count(UNPARSABLE) == 0
    assert dropped_count("database not found") is None


def test_a_refused_line_becomes_a_dead_letter_with_influxdbs_words() -> None:
    line = "device_sample,host=h,device=h/gpu0,kind=gpu power_w=1.5 1700000000000000000"
    letter = rejected_line_letter(
        RejectedLine(line, 400, "influx-field-type-conflict", CONFLICT),
        source_topic="telemetry.samples",
        now_ns=1_700_000_000_500_000_000,
    )
    back = codec.decode(DeadLetter, codec.encode(letter))
    assert back.original == line.encode()
    assert back.reason == "influx-field-type-conflict"
    assert back.detail == f"InfluxDB 400: {CONFLICT}"
    assert (back.stage, back.source_topic, back.partition, back.offset) == (
        "influx-sink",
        "telemetry.samples",
        -1,
        -1,
    )


def test_every_sink_reason_is_documented() -> None:
    from tests.unit.test_schema_docs import tables_with

    (table,) = tables_with("Sink reason")
    assert table.section == "`telemetry.dlq`"
    code = {*REJECTION_REASONS.values(), OTHER_REJECTION, TOO_LARGE}
    assert set(table.column(0)) == code


def test_docstring_examples_run() -> None:
    import doctest

    import accelpilot.streams.influx_sink as module

    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0
