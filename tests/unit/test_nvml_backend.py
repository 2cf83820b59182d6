"""The NVML backend against the fake NVML (tests/fakes/fake_nvml.py): no GPU needed."""

from __future__ import annotations

import sys
from collections import Counter

import pynvml
import pytest

from accelpilot.collectors.backends.nvml import (
    COLUMNS,
    READ_CALLS,
    REASON_NO_DEVICES,
    REASON_NO_DRIVER,
    REASON_NO_PERMISSION,
    REASON_NOT_INSTALLED,
    NvmlBackend,
)
from accelpilot.collectors.device import PowerLimits
from accelpilot.errors import ActuationError, BackendError
from accelpilot.schemas.metrics import METRICS
from tests.fakes.fake_nvml import DOUBLE, FakeNvml, a100_mig, h100_sxm, old_gpu

TS = 1_700_000_000_000_000_000


def backend(*gpus, **kwargs) -> tuple[NvmlBackend, FakeNvml]:
    fake = FakeNvml(list(gpus) or [h100_sxm()], **kwargs)
    return NvmlBackend("host1", fake, clock_ns=lambda: TS), fake


# -- probe -----------------------------------------------------------------------------------------
def test_probe_library_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    availability = NvmlBackend("host1").probe()
    assert not availability.available
    assert availability.reason == REASON_NOT_INSTALLED
    assert "nvidia-ml-py" in availability.reason and "pynvml 11.x" in availability.reason


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (pynvml.NVMLError_LibraryNotFound, REASON_NO_DRIVER),
        (pynvml.NVMLError_DriverNotLoaded, REASON_NO_DRIVER),
        (pynvml.NVMLError_NoPermission, REASON_NO_PERMISSION),
    ],
)
def test_probe_init_failures_name_the_fix(error: type[Exception], reason: str) -> None:
    b, fake = backend(init_error=error)
    availability = b.probe()
    assert availability == type(availability)(False, reason)
    assert fake.calls["nvmlInit"] == 1


def test_probe_reasons_for_version_mismatch_and_unknown() -> None:
    b, _ = backend(init_error=pynvml.NVMLError_LibRmVersionMismatch)
    assert "version mismatch" in b.probe().reason
    b, _ = backend(init_error=pynvml.NVMLError_Unknown)
    assert b.probe().reason == "NVML failed to start: Unknown Error"


def test_probe_zero_devices_shuts_nvml_down() -> None:
    fake = FakeNvml([])
    availability = NvmlBackend("host1", fake).probe()
    assert (availability.available, availability.reason) == (False, REASON_NO_DEVICES)
    assert fake.init_count == 0
    assert fake.calls["nvmlShutdown"] == 1


def test_probe_is_cached() -> None:
    b, fake = backend(h100_sxm(0), h100_sxm(1))
    first = b.probe()
    assert first.available and "2" in first.reason
    assert b.probe() is first
    assert fake.calls["nvmlInit"] == 1


def test_discover_when_unavailable_raises_backend_error_with_the_reason() -> None:
    b, _ = backend(init_error=pynvml.NVMLError_DriverNotLoaded)
    with pytest.raises(BackendError, match="NVIDIA driver not loaded"):
        b.discover()
    with pytest.raises(BackendError, match="NVIDIA driver not loaded"):
        b.read()


# -- discovery -------------------------------------------------------------------------------------
def test_discovery_fields_h100() -> None:
    b, _ = backend(h100_sxm(0), h100_sxm(1))
    devices = b.discover()
    assert [d.device_id for d in devices] == ["host1/gpu0", "host1/gpu1"]
    d = devices[0]
    assert (d.backend, d.kind, d.vendor, d.index) == ("nvml", "gpu", "nvidia", 0)
    assert d.model == "NVIDIA H100 80GB HBM3"
    assert d.uuid == "GPU-9c3b3b8e-4f1c-7d2a-8e11-000000000000"
    assert d.memory_total_bytes == 81559 * (1 << 20)
    c = d.capabilities
    assert c.compute_capability == "9.0"
    assert (c.mig_supported, c.mig_enabled) == (True, False)
    assert c.power_limits == PowerLimits(min_w=200.0, max_w=700.0, default_w=700.0)
    assert (c.max_clock_sm_mhz, c.max_clock_mem_mhz) == (1980.0, 2619.0)
    assert c.ecc_enabled is True
    assert (c.pcie_gen, c.pcie_width) == (5, 16)
    assert c.nvlink_links == 18
    assert (c.driver_version, c.library_version) == ("550.54.15", "12.550.54.15")
    assert c.extra == {"xid_events": True}
    assert b.discover() == devices  # stable


def test_discovery_mig_and_old_card() -> None:
    b, fake = backend(a100_mig(0), old_gpu(1))
    fake.gpus[0].nvlink_active[3] = False
    a100, k80 = b.discover()
    assert (a100.capabilities.mig_supported, a100.capabilities.mig_enabled) == (True, True)
    assert a100.capabilities.nvlink_links == 11
    assert k80.capabilities.compute_capability == "3.7"
    assert (k80.capabilities.mig_supported, k80.capabilities.mig_enabled) == (False, False)
    assert k80.capabilities.nvlink_links == 0
    assert k80.capabilities.power_limits == PowerLimits(100.0, 175.0, 149.0)


def test_each_discovery_query_is_guarded() -> None:
    gpu = h100_sxm()
    gpu.raises.update(
        {
            "nvmlDeviceGetCudaComputeCapability": pynvml.NVMLError_NotSupported,
            "nvmlDeviceGetPowerManagementDefaultLimit": pynvml.NVMLError_NotSupported,
            "nvmlDeviceGetEccMode": pynvml.NVMLError_NotSupported,
            "nvmlDeviceGetMaxPcieLinkWidth": pynvml.NVMLError_Unknown,
        }
    )
    b, _ = backend(gpu)
    c = b.discover()[0].capabilities
    assert c.compute_capability is None
    assert c.power_limits is None  # all three or nothing
    assert c.ecc_enabled is None
    assert c.pcie_width is None and c.pcie_gen == 5
    assert c.extra["query_errors"] == {"nvmlDeviceGetMaxPcieLinkWidth": "Unknown Error"}
    assert c.max_clock_sm_mhz == 1980.0


def test_gpu_lost_during_discovery_is_a_backend_error() -> None:
    gpu = h100_sxm()
    gpu.raises["nvmlDeviceGetMaxClockInfo"] = pynvml.NVMLError_GpuIsLost
    b, _ = backend(gpu)
    with pytest.raises(BackendError, match="GPU lost") as info:
        b.discover()
    assert isinstance(info.value.__cause__, pynvml.NVMLError_GpuIsLost)


# -- metrics ---------------------------------------------------------------------------------------
def test_every_metric_mapped_with_unit_conversion() -> None:
    b, _ = backend(h100_sxm())
    reading = b.read()
    assert set(COLUMNS) <= set(METRICS)
    assert list(reading.metrics) == list(COLUMNS)
    values = {k: v[0] for k, v in reading.metrics.items()}
    assert values == {
        "power_w": 312.456,  # mW -> W
        "power_instant_w": 325.11,  # field value, mW -> W
        "energy_j": 1_234_567.89,  # mJ -> J
        "cap_w": 700.0,
        "temp_c": 45.0,
        "mem_temp_c": 52.0,
        "util_compute_pct": 87.0,
        "util_mem_pct": 41.0,
        "mem_used_bytes": float(40 << 30),
        "mem_total_bytes": float(81559 << 20),
        "clock_sm_mhz": 1980.0,
        "clock_mem_mhz": 2619.0,
        "pstate": 0.0,
        "throttle_reasons_mask": 4.0,
        "fan_pct": None,  # SXM: no fan
        "ecc_corrected_total": 3.0,
        "ecc_uncorrected_total": 0.0,
        "retired_pages_total": None,  # Hopper remaps rows instead
        "remapped_rows_total": 1.0,  # COR + UNC
        "pcie_replay_total": 7.0,
        "nvlink_errors_total": 7.0,  # CRC flit 2 + CRC data 1 + replay 0 + recovery 4
        "process_count": 2.0,
    }
    assert reading.events == []


def test_field_values_decoded_by_value_type() -> None:
    b, fake = backend(a100_mig())
    gpu = fake.gpus[0]
    assert gpu.fields[pynvml.NVML_FI_DEV_MEMORY_TEMP][0] == DOUBLE
    gpu.set_field(pynvml.NVML_FI_DEV_MEMORY_TEMP, 41.5, DOUBLE)
    gpu.set_field(pynvml.NVML_FI_DEV_RETIRED_SBE, 2)
    gpu.set_field(pynvml.NVML_FI_DEV_RETIRED_DBE, 1)
    m = b.read().metrics
    assert m["mem_temp_c"] == [41.5]
    assert m["power_instant_w"] == [93.5]
    assert m["retired_pages_total"] == [3.0]


def test_values_follow_the_device_between_ticks() -> None:
    b, fake = backend(h100_sxm())
    b.read()
    gpu = fake.gpus[0]
    gpu.power_mw, gpu.energy_mj, gpu.util_gpu = 650_000, 1_234_600_000, 100
    gpu.set_field(pynvml.NVML_FI_DEV_ECC_DBE_VOL_TOTAL, 2)
    m = b.read().metrics
    assert (m["power_w"], m["energy_j"], m["util_compute_pct"]) == ([650.0], [1_234_600.0], [100.0])
    assert m["ecc_uncorrected_total"] == [2.0]


def test_unsupported_is_none_never_zero_and_not_queried_again() -> None:
    b, fake = backend(old_gpu())
    for _ in range(3):
        m = b.read().metrics
    for name in (
        "energy_j",
        "power_instant_w",
        "mem_temp_c",
        "fan_pct",
        "ecc_corrected_total",
        "nvlink_errors_total",
    ):
        assert m[name] == [None], name
    assert m["power_w"] == [58.0]
    for fn in (
        "nvmlDeviceGetTotalEnergyConsumption",
        "nvmlDeviceGetFieldValues",
        "nvmlDeviceGetFanSpeed",
        "nvmlDeviceGetCurrentClocksEventReasons",
    ):
        assert fake.calls[fn] == 1, fn
    assert fake.calls["nvmlDeviceGetPowerUsage"] == 3


def test_unsupported_field_ids_are_dropped_from_the_batch() -> None:
    b, fake = backend(h100_sxm())
    b.read()
    b.read()
    (_, first), (_, second) = fake.field_requests
    retired = {pynvml.NVML_FI_DEV_RETIRED_SBE, pynvml.NVML_FI_DEV_RETIRED_DBE}
    assert retired <= set(first)
    assert not retired & set(second)
    assert set(first) - set(second) == retired


def test_no_field_ids_no_call_and_ecc_nvlink_skipped_when_absent() -> None:
    gpu = h100_sxm()
    gpu.ecc_mode = (0, 0)
    gpu.nvlink_active = []
    b, fake = backend(gpu)
    m = b.read().metrics
    asked = set(fake.field_requests[0][1])
    assert pynvml.NVML_FI_DEV_ECC_SBE_VOL_TOTAL not in asked
    assert pynvml.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL not in asked
    assert m["ecc_corrected_total"] == [None] and m["nvlink_errors_total"] == [None]
    assert m["pcie_replay_total"] == [7.0]
    # Every remaining id answers NOT_SUPPORTED once: all dropped, and the batch call stops.
    gpu.fields.clear()
    b.read()
    b.read()
    b.read()
    assert fake.calls["nvmlDeviceGetFieldValues"] == 2


def test_transient_field_error_is_none_for_that_tick_only() -> None:
    b, fake = backend(h100_sxm())
    gpu = fake.gpus[0]
    gpu.field_errors[pynvml.NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL] = pynvml.NVML_ERROR_UNKNOWN
    m = b.read().metrics
    assert m["nvlink_errors_total"] == [None]  # a partial sum would look like a counter reset
    assert m["pcie_replay_total"] == [7.0]
    gpu.field_errors.clear()
    assert b.read().metrics["nvlink_errors_total"] == [7.0]


def test_clocks_event_reasons_fall_back_to_throttle_reasons() -> None:
    b, fake = backend(old_gpu())
    assert b.read().metrics["throttle_reasons_mask"] == [1.0]
    assert b.read().metrics["throttle_reasons_mask"] == [1.0]
    assert fake.calls["nvmlDeviceGetCurrentClocksEventReasons"] == 1
    assert fake.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 2


def test_unknown_pstate_is_none() -> None:
    b, fake = backend(h100_sxm())
    fake.gpus[0].pstate = pynvml.NVML_PSTATE_UNKNOWN
    assert b.read().metrics["pstate"] == [None]


def test_out_of_range_values_are_dropped_and_counted() -> None:
    gpu = old_gpu()
    gpu.raises.pop("nvmlDeviceGetFanSpeed")
    gpu.fan_pct = 115  # NVML documents that fan speed may exceed 100%
    b, fake = backend(gpu, h100_sxm())
    fake.gpus[1].set_field(pynvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER, 2**64 - 1)  # N/A sentinel
    m = b.read().metrics
    assert m["fan_pct"] == [None, None]
    assert m["pcie_replay_total"] == [None, None]
    assert b.out_of_range == {"fan_pct": 1, "pcie_replay_total": 1}


def test_mig_device_without_utilization_or_process_list() -> None:
    b, fake = backend(a100_mig())
    m = b.read().metrics
    assert m["util_compute_pct"] == [None] and m["util_mem_pct"] == [None]
    assert m["process_count"] == [None]  # NoPermission: remembered like NotSupported
    b.read()
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses"] == 1


def test_process_list_on_a_driver_older_than_the_binding() -> None:
    gpu = old_gpu()
    gpu.raises["nvmlDeviceGetComputeRunningProcesses"] = pynvml.NVMLLibraryMismatchError
    b, fake = backend(gpu)
    assert b.read().metrics["process_count"] == [None]
    b.read()
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses"] == 1


def test_process_list_every_nth_tick_carries_the_count() -> None:
    fake = FakeNvml([h100_sxm()])
    b = NvmlBackend("host1", fake, process_every=3)
    counts = []
    for tick in range(6):
        if tick == 2:
            fake.gpus[0].processes = 5  # not seen until the next process read (tick 3)
        counts.append(b.read().metrics["process_count"][0])
    assert counts == [2.0, 2.0, 2.0, 5.0, 5.0, 5.0]
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses"] == 2


def test_read_errors_become_one_fault_event_per_change() -> None:
    b, fake = backend(h100_sxm(), h100_sxm(1))
    b.read()
    gpu = fake.gpus[1]
    for fn in READ_CALLS:
        gpu.raises[fn] = pynvml.NVMLError_GpuIsLost
    first = b.read()
    assert first.metrics["power_w"] == [312.456, None]
    assert len(first.events) == 1
    event = first.events[0]
    assert (event.device_id, event.kind, event.code, event.ts_ns) == (
        "host1/gpu1",
        "fault",
        pynvml.NVML_ERROR_GPU_IS_LOST,
        TS,
    )
    assert event.detail == "nvmlDeviceGetPowerUsage: GPU is lost"
    assert b.read().events == []  # same fault: not repeated
    for fn in READ_CALLS:
        gpu.raises.pop(fn, None)
    assert b.read().metrics["power_w"] == [312.456, 312.456]
    gpu.raises["nvmlDeviceGetTemperature"] = pynvml.NVMLError_Unknown
    again = b.read()
    assert [(e.kind, e.code) for e in again.events] == [("fault", pynvml.NVML_ERROR_UNKNOWN)]
    assert again.metrics["temp_c"] == [45.0, None]
    gpu.raises.pop("nvmlDeviceGetTemperature")
    assert b.read().metrics["temp_c"] == [45.0, 45.0]  # transient: still queried


# -- XID events ------------------------------------------------------------------------------------
def test_xids_are_drained_without_blocking() -> None:
    b, fake = backend(h100_sxm(0), a100_mig(1))
    b.discover()
    fake.push_xid(1, 79)
    fake.push_xid(0, 48)
    fake.push_xid(1, 94, gpu_instance=3, compute_instance=0)
    events = b.read().events
    assert [(e.device_id, e.kind, e.code) for e in events] == [
        ("host1/gpu1", "xid", 79),
        ("host1/gpu0", "xid", 48),
        ("host1/gpu1", "xid", 94),
    ]
    assert all(e.ts_ns == TS for e in events)
    assert events[0].detail == ""
    assert events[2].detail == "gpu_instance=3 compute_instance=0"
    assert fake.wait_timeouts == [0, 0, 0, 0]  # three events, then the Timeout that ends it
    assert b.read().events == []
    assert fake.wait_timeouts[-1] == 0


def test_xid_drain_is_bounded_per_tick() -> None:
    fake = FakeNvml([h100_sxm()])
    b = NvmlBackend("host1", fake, max_events_per_tick=2)
    b.discover()
    for xid in (13, 31, 43):
        fake.push_xid(0, xid)
    assert [e.code for e in b.read().events] == [13, 31]
    assert [e.code for e in b.read().events] == [43]


def test_device_without_event_support_still_reads() -> None:
    gpu = h100_sxm()
    gpu.raises["nvmlDeviceRegisterEvents"] = pynvml.NVMLError_NotSupported
    b, fake = backend(gpu)
    assert b.discover()[0].capabilities.extra["xid_events"] is False
    fake.push_xid(0, 79)  # not registered: never delivered
    assert b.read().events == []


# -- call budget -----------------------------------------------------------------------------------
def test_call_budget_per_device_per_tick() -> None:
    """The exact number of NVML calls per device per tick: a per-metric call added by a
    regression changes these numbers."""
    assert len(READ_CALLS) == 13
    b, fake = backend(h100_sxm(0), h100_sxm(1), a100_mig(2), old_gpu(3))
    b.discover()
    fake.reset_calls()
    b.read()
    # First tick: every call once; the old card also tries the clocks-event-reasons call.
    assert dict(fake.device_calls) == {0: 13, 1: 13, 2: 13, 3: 14}
    assert fake.calls["nvmlEventSetWait"] == 1  # once per host, not per device
    for _ in range(3):
        fake.reset_calls()
        b.read()
        # Steady state: unsupported calls are gone. H100 SXM: no fan. A100 MIG: no fan, no
        # utilization, no process list. K80: no fan, energy, field values.
        assert dict(fake.device_calls) == {0: 12, 1: 12, 2: 10, 3: 10}
        assert fake.calls["nvmlEventSetWait"] == 1
        assert fake.calls["nvmlDeviceGetFieldValues"] == 3  # one batch per device that has one
    h100_calls = Counter(READ_CALLS)
    del h100_calls["nvmlDeviceGetFanSpeed"]
    fake.reset_calls()
    b2, fake2 = backend(h100_sxm())
    b2.read()
    fake2.reset_calls()
    b2.read()
    assert fake2.calls - Counter({"nvmlEventSetWait": 1}) == h100_calls


# -- power caps ------------------------------------------------------------------------------------
def test_power_cap_w_is_the_enforced_limit() -> None:
    b, fake = backend(a100_mig())
    assert b.power_cap_w(0) == 300.0
    fake.gpus[0].raises["nvmlDeviceGetEnforcedPowerLimit"] = pynvml.NVMLError_NotSupported
    assert b.power_cap_w(0) is None
    fake.gpus[0].raises["nvmlDeviceGetEnforcedPowerLimit"] = pynvml.NVMLError_Unknown
    with pytest.raises(BackendError) as info:
        b.power_cap_w(0)
    assert isinstance(info.value.__cause__, pynvml.NVMLError_Unknown)
    with pytest.raises(BackendError, match="no NVIDIA GPU with index 5"):
        b.power_cap_w(5)


def test_set_power_cap_writes_milliwatts() -> None:
    b, fake = backend(h100_sxm())
    b.set_power_cap_w(0, 450.4)
    assert fake.calls["nvmlDeviceSetPowerManagementLimit"] == 1
    assert fake.gpus[0].limit_mw == 450_400
    assert b.power_cap_w(0) == 450.4


def test_set_power_cap_skips_the_write_when_equal_within_1_w() -> None:
    b, fake = backend(h100_sxm())
    b.set_power_cap_w(0, 700.0)
    b.set_power_cap_w(0, 699.2)
    assert fake.calls["nvmlDeviceGetPowerManagementLimit"] == 2  # read, compare...
    assert fake.calls["nvmlDeviceSetPowerManagementLimit"] == 0  # ...no write
    b.set_power_cap_w(0, 698.9)
    assert fake.calls["nvmlDeviceSetPowerManagementLimit"] == 1


def test_set_power_cap_compares_against_the_management_limit() -> None:
    b, fake = backend(h100_sxm())
    fake.gpus[0].enforced_limit_mw = 500_000  # an out-of-band cap sits below the setting
    b.set_power_cap_w(0, 700.0)
    assert fake.calls["nvmlDeviceSetPowerManagementLimit"] == 0


def test_set_power_cap_without_permission() -> None:
    gpu = h100_sxm()
    gpu.raises["nvmlDeviceSetPowerManagementLimit"] = pynvml.NVMLError_NoPermission
    b, _ = backend(gpu)
    with pytest.raises(ActuationError, match="needs root / CAP_SYS_ADMIN") as info:
        b.set_power_cap_w(0, 400.0)
    assert isinstance(info.value.__cause__, pynvml.NVMLError_NoPermission)


def test_set_power_cap_refusals() -> None:
    b, fake = backend(h100_sxm())
    with pytest.raises(ActuationError, match=r"outside GPU 0's power-limit range \[200, 700\]"):
        b.set_power_cap_w(0, 150.0)
    with pytest.raises(ActuationError, match="not a positive number"):
        b.set_power_cap_w(0, float("nan"))
    with pytest.raises(ActuationError, match="no NVIDIA GPU with index 3"):
        b.set_power_cap_w(3, 400.0)
    assert fake.calls["nvmlDeviceSetPowerManagementLimit"] == 0
    fake.gpus[0].raises["nvmlDeviceGetPowerManagementLimit"] = pynvml.NVMLError_NotSupported
    with pytest.raises(ActuationError, match="does not support power limits"):
        b.set_power_cap_w(0, 400.0)
    unavailable, _ = backend(init_error=pynvml.NVMLError_DriverNotLoaded)
    with pytest.raises(ActuationError, match="NVIDIA driver not loaded"):
        unavailable.set_power_cap_w(0, 400.0)


# -- lifecycle -------------------------------------------------------------------------------------
def test_close_frees_the_event_set_and_shuts_nvml_down() -> None:
    b, fake = backend(h100_sxm())
    b.read()
    b.close()
    assert fake.init_count == 0
    assert fake.event_sets[0].freed
    assert b.probe().available  # a closed backend can start again
    assert fake.init_count == 1
