"""The Kafka topics of accelpilot and the payload type each one carries."""

from __future__ import annotations

import msgspec

from accelpilot.schemas.action_results import ActionResult
from accelpilot.schemas.actions import Action
from accelpilot.schemas.aggregates import Aggregate
from accelpilot.schemas.alerts import Alert
from accelpilot.schemas.anomalies import AnomalyScore
from accelpilot.schemas.dlq import DeadLetter
from accelpilot.schemas.samples import HostSample

SAMPLES = "telemetry.samples"
AGGREGATES = "telemetry.aggregates"
ANOMALIES = "telemetry.anomalies"
DLQ = "telemetry.dlq"
ALERTS = "fleet.alerts"
ACTIONS = "fleet.actions"
ACTION_RESULTS = "fleet.action-results"

PAYLOAD_TYPES: dict[str, type[msgspec.Struct]] = {
    SAMPLES: HostSample,
    AGGREGATES: Aggregate,
    ANOMALIES: AnomalyScore,
    ALERTS: Alert,
    ACTIONS: Action,
    ACTION_RESULTS: ActionResult,
    DLQ: DeadLetter,
}

ALL_TOPICS: tuple[str, ...] = tuple(PAYLOAD_TYPES)

# How often our long-running group consumers (agent, optimizer, alert service) refresh topic
# metadata. kafka-python's default is 5 min: a member that joined before its topic was served
# (created a moment earlier, or not yet created by the worker) holds no partitions, and would
# rejoin only at that refresh. 10 s costs one small metadata request per consumer.
GROUP_METADATA_MAX_AGE_MS = 10_000
