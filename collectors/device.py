"""The one abstract device interface every backend implements (nvml, amdsmi, cpu, sim).

Nothing outside a backend module calls a vendor library. A backend reads all of its devices at
once and returns columns named from :data:`accelpilot.schemas.metrics.METRICS`; a metric a device
does not support is ``None`` (absent downstream), never zero. Vendor errors are translated at the
boundary into :mod:`accelpilot.errors` (``raise ... from e``).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

from accelpilot.schemas.samples import DeviceEvent

log = logging.getLogger(__name__)

DeviceKind = Literal["gpu", "cpu", "npu", "tpu"]


def host_of(device_id: str) -> str:
    """The host of a device id ``<host>/<device>`` (discovery's and the sim fleet's convention)."""
    return device_id.split("/", 1)[0] if "/" in device_id else "sim"


@dataclass(frozen=True, slots=True)
class Availability:
    """Whether a backend can run here, and if not, why (library absent, no devices, permission)."""

    available: bool
    reason: str


@dataclass(frozen=True, slots=True)
class PowerLimits:
    """The device's own power-limit constraints (an actuator never leaves [min_w, max_w])."""

    min_w: float
    max_w: float
    default_w: float


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a device can do; ``None`` = the backend cannot tell."""

    compute_capability: str | None = None
    mig_supported: bool | None = None
    mig_enabled: bool | None = None
    power_limits: PowerLimits | None = None
    max_clock_sm_mhz: float | None = None
    max_clock_mem_mhz: float | None = None
    ecc_enabled: bool | None = None
    pcie_gen: int | None = None
    pcie_width: int | None = None
    nvlink_links: int | None = None
    driver_version: str | None = None
    library_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One accelerator as discovered. ``device_id`` is stable: ``<host>/<kind><index>``."""

    device_id: str
    backend: str
    kind: DeviceKind
    vendor: str
    model: str
    index: int
    uuid: str | None
    memory_total_bytes: int | None
    capabilities: Capabilities

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Reading:
    """One tick of one backend: columns in the order of its :meth:`DeviceBackend.discover`."""

    metrics: dict[str, list[float | None]]
    events: list[DeviceEvent] = field(default_factory=list)


class DeviceBackend(ABC):
    """A family of devices on this host. Construct cheaply; touch the vendor library in
    :meth:`probe`/:meth:`discover`; release it in :meth:`close`."""

    name: ClassVar[str]

    def probe(self) -> Availability:
        """Can this backend run here? Never raises; the reason names the fix. Cached: a missing
        library or driver is looked for once per backend instance."""
        cached: Availability | None = getattr(self, "_availability", None)
        if cached is None:
            cached = self._availability = self._probe()
            if not cached.available:
                log.info("%s backend unavailable: %s", self.name, cached.reason)
        return cached

    @abstractmethod
    def _probe(self) -> Availability:
        """The actual availability check, run once by :meth:`probe`."""

    @abstractmethod
    def discover(self) -> list[DeviceInfo]:
        """The devices, in a stable order (the order of every :class:`Reading` column)."""

    @abstractmethod
    def read(self) -> Reading:
        """Sample every device once. Must be cheap: this runs every tick (down to 0.1 s)."""

    def power_cap_w(self, index: int) -> float | None:
        """The enforced power limit of device ``index``, or None if not readable."""
        return None

    def set_power_cap_w(self, index: int, cap_w: float) -> None:
        """Set the power limit (the actuator has already verified the action and the range)."""
        from accelpilot.errors import ActuationError

        raise ActuationError(f"the {self.name} backend cannot set power limits")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the vendor library."""
