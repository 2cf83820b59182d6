"""``telemetry.samples`` v1: one host at one instant, all of its devices, column by column."""

from __future__ import annotations

from typing import Literal

import msgspec

DeviceKind = Literal["gpu", "cpu", "npu", "tpu"]
EventKind = Literal["xid", "ecc", "throttle", "fault"]


class DeviceEvent(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A discrete device event seen since the previous sample (an XID, an ECC burst...)."""

    device_id: str
    kind: EventKind
    code: int
    ts_ns: int
    detail: str = ""


class AgentHealth(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The publishing agent's own health at the time of the sample."""

    buffer_depth: int = 0
    oldest_buffered_ts_ns: int | None = None
    dropped_total: int = 0


class HostSample(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """All devices of one host at one instant.

    ``metrics`` maps a metric name from :data:`accelpilot.schemas.metrics.METRICS` to one value per
    device, in the order of ``device_ids``; ``None`` means the device does not report it.
    """

    v: int = 1
    host_id: str
    ts_ns: int
    seq: int
    interval_s: float
    device_ids: list[str]
    device_kinds: list[DeviceKind]
    metrics: dict[str, list[float | None]]
    events: list[DeviceEvent] = []
    agent: AgentHealth | None = None

    @property
    def n_devices(self) -> int:
        return len(self.device_ids)
