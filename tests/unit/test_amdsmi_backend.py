"""The AMD SMI backend: probe without the package, and the mapping against a minimal fake module
shaped like ROCm 6.x's ``amdsmi`` (no AMD hardware was available to check the real one)."""

from __future__ import annotations

import sys
from enum import IntEnum
from typing import Any

import pytest

from accelpilot.collectors.backends.amdsmi import (
    COLUMNS,
    REASON_NO_DEVICES,
    REASON_NO_PERMISSION,
    REASON_NOT_INSTALLED,
    AmdSmiBackend,
)
from accelpilot.collectors.device import PowerLimits
from accelpilot.errors import ActuationError
from accelpilot.schemas.metrics import METRICS


class AmdSmiRetCode(IntEnum):
    ERR_NOT_SUPPORTED = 2
    ERR_NO_PERM = 10


class AmdSmiException(Exception):
    pass


class AmdSmiLibraryException(AmdSmiException):
    def __init__(self, err_code: int) -> None:
        super().__init__(err_code)
        self.err_code = err_code

    def get_error_code(self) -> int:
        return self.err_code


class FakeAmdSmi:
    """The calls and enums the backend uses, with one MI300X-like device."""

    AmdSmiRetCode = AmdSmiRetCode
    AmdSmiLibraryException = AmdSmiLibraryException

    class AmdSmiInitFlags(IntEnum):
        INIT_AMD_GPUS = 2

    class AmdSmiMemoryType(IntEnum):
        VRAM = 0

    class AmdSmiClkType(IntEnum):
        GFX = 1
        MEM = 5

    class AmdSmiTemperatureType(IntEnum):
        EDGE = 0
        HOTSPOT = 1
        VRAM = 2

    class AmdSmiTemperatureMetric(IntEnum):
        CURRENT = 0

    def __init__(self, n: int = 1, init_error: int | None = None) -> None:
        self.handles = [f"handle{i}" for i in range(n)]
        self.init_error = init_error
        self.calls: list[str] = []
        self.cap_uw = 750_000_000
        self.unsupported: set[str] = {"temp_edge"}  # MI300X has no edge sensor
        self.set_error: int | None = None
        self.errors: dict[str, int] = {}  # call -> an AMDSMI_STATUS_* to raise (not "unsupported")

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name in self.unsupported:
            raise AmdSmiLibraryException(AmdSmiRetCode.ERR_NOT_SUPPORTED)
        if name in self.errors:
            raise AmdSmiLibraryException(self.errors[name])

    def amdsmi_init(self, flags: int = 0) -> None:
        if self.init_error is not None:
            raise AmdSmiLibraryException(self.init_error)

    def amdsmi_shut_down(self) -> None:
        self.calls.append("amdsmi_shut_down")

    def amdsmi_get_processor_handles(self) -> list[str]:
        return list(self.handles)

    def amdsmi_get_lib_version(self) -> dict[str, Any]:
        return {"year": 24, "major": 6, "minor": 2, "release": 1, "build": "x"}

    def amdsmi_get_gpu_asic_info(self, h: str) -> dict[str, Any]:
        return {"market_name": "AMD Instinct MI300X", "target_graphics_version": "gfx942"}

    def amdsmi_get_gpu_device_uuid(self, h: str) -> str:
        return "e1ff74a1-0000-1000-80a4-6e1c2d3f4a5b"

    def amdsmi_get_gpu_memory_total(self, h: str, mem_type: int) -> int:
        return 192 << 30

    def amdsmi_get_gpu_driver_info(self, h: str) -> dict[str, str]:
        return {"driver_name": "amdgpu", "driver_version": "6.8.5"}

    def amdsmi_get_pcie_info(self, h: str) -> dict[str, Any]:
        return {"pcie_static": {"max_pcie_width": 16, "pcie_interface_version": 5}}

    def amdsmi_get_gpu_ecc_enabled(self, h: str) -> int:
        return 0x3F

    def amdsmi_get_power_cap_info(self, h: str) -> dict[str, int]:
        self._call("power_cap_info")
        return {
            "power_cap": self.cap_uw,
            "default_power_cap": 750_000_000,
            "dpm_cap": 2100,
            "min_power_cap": 0,
            "max_power_cap": 750_000_000,
        }

    def amdsmi_set_power_cap(self, h: str, sensor_ind: int, cap: int) -> None:
        self.calls.append(f"set_power_cap:{sensor_ind}:{cap}")
        if self.set_error is not None:
            raise AmdSmiLibraryException(self.set_error)
        self.cap_uw = cap

    def amdsmi_get_power_info(self, h: str) -> dict[str, Any]:
        self._call("power_info")
        return {
            "current_socket_power": 512,
            "average_socket_power": "N/A",  # MI300: only current
            "gfx_voltage": 800,
            "soc_voltage": 700,
            "mem_voltage": 1100,
            "power_limit": 750,
        }

    def amdsmi_get_energy_count(self, h: str) -> dict[str, Any]:
        self._call("energy")
        return {"energy_accumulator": 2_000_000, "counter_resolution": 15.3, "timestamp": 1}

    def amdsmi_get_temp_metric(self, h: str, sensor: int, metric: int) -> int:
        self._call(f"temp_{self.AmdSmiTemperatureType(sensor).name.lower()}")
        return {0: 40, 1: 61, 2: 48}[sensor]

    def amdsmi_get_gpu_activity(self, h: str) -> dict[str, Any]:
        self._call("activity")
        return {"gfx_activity": 93, "umc_activity": 37, "mm_activity": "N/A"}

    def amdsmi_get_gpu_memory_usage(self, h: str, mem_type: int) -> int:
        self._call("vram")
        return 64 << 30

    def amdsmi_get_clock_info(self, h: str, clk: int) -> dict[str, Any]:
        self._call(f"clock_{self.AmdSmiClkType(clk).name.lower()}")
        if clk == self.AmdSmiClkType.GFX:
            return {"clk": 2100, "min_clk": 500, "max_clk": 2100, "clk_locked": False}
        return {"clk": 1300, "min_clk": 900, "max_clk": 1300, "clk_locked": False}

    def amdsmi_get_gpu_total_ecc_count(self, h: str) -> dict[str, int]:
        self._call("ecc")
        return {"correctable_count": 5, "uncorrectable_count": 0, "deferred_count": 0}


def test_probe_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "amdsmi", None)
    availability = AmdSmiBackend("host1").probe()
    assert (availability.available, availability.reason) == (False, REASON_NOT_INSTALLED)
    assert "/opt/rocm/share/amd_smi" in availability.reason


def test_probe_reasons() -> None:
    assert AmdSmiBackend("h", FakeAmdSmi(n=0)).probe().reason == REASON_NO_DEVICES
    no_perm = FakeAmdSmi(init_error=AmdSmiRetCode.ERR_NO_PERM)
    assert AmdSmiBackend("h", no_perm).probe().reason == REASON_NO_PERMISSION
    other = AmdSmiBackend("h", FakeAmdSmi(init_error=8)).probe()
    assert not other.available and "AMD SMI failed to start" in other.reason
    assert AmdSmiBackend("h", FakeAmdSmi(n=2)).probe().available


def test_discovery_mapping() -> None:
    (d,) = AmdSmiBackend("host1", FakeAmdSmi()).discover()
    assert (d.device_id, d.backend, d.kind, d.vendor) == ("host1/gpu0", "amdsmi", "gpu", "amd")
    assert d.model == "AMD Instinct MI300X"
    assert d.memory_total_bytes == 192 << 30
    c = d.capabilities
    assert c.power_limits == PowerLimits(min_w=0.0, max_w=750.0, default_w=750.0)  # uW -> W
    assert (c.max_clock_sm_mhz, c.max_clock_mem_mhz) == (2100.0, 1300.0)
    assert (c.ecc_enabled, c.pcie_gen, c.pcie_width) == (True, 5, 16)
    assert (c.driver_version, c.library_version) == ("6.8.5", "6.2.1")
    assert c.extra["gfx_target"] == "gfx942"


def test_read_mapping_and_units() -> None:
    fake = FakeAmdSmi()
    backend = AmdSmiBackend("host1", fake)
    reading = backend.read()
    assert list(reading.metrics) == list(COLUMNS)
    assert set(COLUMNS) <= set(METRICS)
    values = {k: v[0] for k, v in reading.metrics.items()}
    assert values == {
        "power_w": 512.0,  # no average on MI300: the current socket power
        "power_instant_w": 512.0,
        "energy_j": pytest.approx(30.6),  # 2e6 ticks x 15.3 uJ
        "cap_w": 750.0,
        "temp_c": 61.0,  # hotspot
        "mem_temp_c": 48.0,
        "util_compute_pct": 93.0,
        "util_mem_pct": 37.0,
        "mem_used_bytes": float(64 << 30),
        "mem_total_bytes": float(192 << 30),
        "clock_sm_mhz": 2100.0,
        "clock_mem_mhz": 1300.0,
        "ecc_corrected_total": 5.0,
        "ecc_uncorrected_total": 0.0,
    }
    assert reading.events == []


def test_unsupported_is_none_and_remembered_other_errors_fault() -> None:
    fake = FakeAmdSmi()
    fake.unsupported |= {"temp_hotspot", "ecc"}
    backend = AmdSmiBackend("host1", fake)
    first = backend.read().metrics
    assert first["temp_c"] == [None]  # neither hotspot nor edge
    assert first["ecc_corrected_total"] == [None]
    fake.calls.clear()
    backend.read()
    assert not {"temp_hotspot", "temp_edge", "ecc"} & set(fake.calls)
    assert len(fake.calls) == 8  # 11 at most, minus the three unsupported ones
    fake.errors["activity"] = 8  # AMDSMI_STATUS_TIMEOUT: transient
    reading = backend.read()
    assert reading.metrics["util_compute_pct"] == [None]
    assert [(e.device_id, e.kind, e.code) for e in reading.events] == [("host1/gpu0", "fault", 8)]
    assert backend.read().events == []  # the same fault is not repeated
    del fake.errors["activity"]
    assert backend.read().metrics["util_compute_pct"] == [93.0]  # still asked


def test_power_cap_read_compare_write() -> None:
    fake = FakeAmdSmi()
    backend = AmdSmiBackend("host1", fake)
    assert backend.power_cap_w(0) == 750.0
    backend.set_power_cap_w(0, 749.5)
    assert not [c for c in fake.calls if c.startswith("set_power_cap")]
    backend.set_power_cap_w(0, 600.0)
    assert "set_power_cap:0:600000000" in fake.calls  # W -> uW
    fake.set_error = AmdSmiRetCode.ERR_NO_PERM
    with pytest.raises(ActuationError, match="needs root") as info:
        backend.set_power_cap_w(0, 500.0)
    assert isinstance(info.value.__cause__, AmdSmiLibraryException)
    with pytest.raises(ActuationError, match="outside"):
        backend.set_power_cap_w(0, 800.0)
