"""Pick the backends present on this host, in order, and say why the others are missing.

Probes are cached per backend instance: a missing library or driver is looked for once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from accelpilot.collectors.device import Availability, DeviceBackend, DeviceInfo
from accelpilot.errors import ConfigError

# Real hardware first; "sim" only when asked for (it needs a scenario).
DEFAULT_BACKENDS = ("nvml", "amdsmi", "cpu")
KNOWN_BACKENDS = (*DEFAULT_BACKENDS, "sim")


@dataclass
class Discovery:
    """The usable backends with their devices, and the reason each other backend is missing."""

    backends: list[DeviceBackend] = field(default_factory=list)
    devices: list[DeviceInfo] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "devices": [d.to_dict() for d in self.devices],
            "backends": [b.name for b in self.backends],
            "missing": self.missing,
        }


def make_backend(name: str, host_id: str, *, scenario: Path | str | None = None) -> DeviceBackend:
    """Construct one backend by name (vendor libraries are imported lazily inside)."""
    if name == "nvml":
        from accelpilot.collectors.backends.nvml import NvmlBackend

        return NvmlBackend(host_id)
    if name == "amdsmi":
        from accelpilot.collectors.backends.amdsmi import AmdSmiBackend

        return AmdSmiBackend(host_id)
    if name == "cpu":
        from accelpilot.collectors.backends.cpu import CpuBackend

        return CpuBackend(host_id)
    if name == "sim":
        from accelpilot.collectors.backends.sim import SimBackend, SimFleet
        from accelpilot.optimizer.scenario import load_bundled_scenario, load_scenario

        if scenario is None:
            raise ConfigError("backend 'sim' needs a scenario (agent.scenario or --scenario)")
        path = Path(scenario)
        sc = load_scenario(path) if path.suffix == ".json" else load_bundled_scenario(str(scenario))
        return SimBackend(SimFleet(sc), host_id, advances=True)
    raise ConfigError(f"unknown backend {name!r}; choose from {', '.join(KNOWN_BACKENDS)}")


def discover(backends: Sequence[DeviceBackend]) -> Discovery:
    """Probe each backend in order; keep those that are available and have devices."""
    found = Discovery()
    for backend in backends:
        status: Availability = backend.probe()
        if not status.available:
            found.missing[backend.name] = status.reason
            continue
        devices = backend.discover()
        if not devices:
            found.missing[backend.name] = "available, but no devices"
            continue
        found.backends.append(backend)
        found.devices.extend(devices)
    return found
