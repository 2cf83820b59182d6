"""Versioned payloads of every accelpilot topic; docs/schemas.md defines every field."""

from accelpilot.schemas.action_results import ActionResult
from accelpilot.schemas.actions import Action, signing_bytes
from accelpilot.schemas.aggregates import Aggregate, MetricStats
from accelpilot.schemas.alerts import Alert
from accelpilot.schemas.anomalies import AnomalyScore
from accelpilot.schemas.codec import SUPPORTED_VERSION, decode, encode
from accelpilot.schemas.dlq import DeadLetter
from accelpilot.schemas.metrics import METRICS, Metric
from accelpilot.schemas.samples import AgentHealth, DeviceEvent, HostSample

__all__ = [
    "METRICS",
    "SUPPORTED_VERSION",
    "Action",
    "ActionResult",
    "AgentHealth",
    "Aggregate",
    "Alert",
    "AnomalyScore",
    "DeadLetter",
    "DeviceEvent",
    "HostSample",
    "Metric",
    "MetricStats",
    "decode",
    "encode",
    "signing_bytes",
]
