"""A fake NVML (the ``pynvml`` module of nvidia-ml-py) standing in for the NVIDIA driver in tests
that run without a GPU.

It implements exactly the binding calls accelpilot's nvml backend makes; any other function is an
``AttributeError``, so a backend that starts using a new call fails here until the fake learns it.
Return shapes are the real ones: ``pynvml.c_nvmlMemory_t`` (``.total``/``.used``/``.free``),
``pynvml.c_nvmlUtilization_t`` (``.gpu``/``.memory``), arrays of ``pynvml.c_nvmlFieldValue_t``
(``.fieldId``, ``.nvmlReturn``, ``.valueType``, ``.value.uiVal``/``.ullVal``/``.dVal``...),
``[current, pending]`` lists for modes, ``str`` names (nvidia-ml-py >= 11.515 decodes them).
Errors are the real pynvml exception classes (``pynvml.NVMLError_NotSupported``, ...), so
``isinstance`` checks and ``.value`` codes match the driver's; constants (``NVML_*``,
``nvmlEventType*``) are pynvml's own.

Devices are mutable :class:`FakeGpu` records (a test changes a reading between ticks); profiles:
:func:`h100_sxm` (everything supported except the fan), :func:`a100_mig` (MIG on: no utilization,
no process list without root) and :func:`old_gpu` (a Kepler card on an old driver: no field
values, no energy counter, no memory temperature, no clocks-event-reasons call).
``FakeGpu.raises`` maps a function name to the exception class that call raises on that device.
:meth:`FakeNvml.push_xid` queues an XID for the registered event sets; :attr:`FakeNvml.calls`
counts every call by function name and :attr:`FakeNvml.device_calls` every call that names a
device, by device index.

Not a simulator: values change only when a test changes them.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import pynvml

_GIB = 1 << 30
_MIB = 1 << 20
NO_INSTANCE = 0xFFFFFFFF

# nvmlValueType_t
DOUBLE = pynvml.NVML_VALUE_TYPE_DOUBLE
UINT = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
ULL = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
_MEMBER = {DOUBLE: "dVal", UINT: "uiVal", ULL: "ullVal"}

# The pynvml names the fake forwards (constants, error classes, ctypes structures).
_FORWARDED_PREFIXES = (
    "NVML_",
    "NVMLError",
    "NVMLLibraryMismatchError",
    "nvmlEventType",
    "nvmlClocks",
    "c_nvml",
)


@dataclass(frozen=True)
class FakeHandle:
    """What nvmlDeviceGetHandleByIndex returns (the real one is an opaque ctypes pointer)."""

    index: int


@dataclass
class FakeEventData:
    """The fields of ``pynvml.c_nvmlEventData_t`` the backend reads."""

    device: FakeHandle
    eventType: int
    eventData: int
    gpuInstanceId: int = NO_INSTANCE
    computeInstanceId: int = NO_INSTANCE


@dataclass
class FakeProcess:
    pid: int
    usedGpuMemory: int | None


@dataclass
class FakeEventSet:
    registered: dict[int, int] = field(default_factory=dict)  # device index -> event type mask
    queue: deque[FakeEventData] = field(default_factory=deque)
    freed: bool = False


@dataclass
class FakeGpu:
    """One fake device. Units as NVML returns them: mW, mJ, degC, MHz, bytes."""

    name: str
    uuid: str
    memory_total: int
    memory_used: int
    compute_capability: tuple[int, int]
    mig_mode: tuple[int, int]  # (current, pending)
    min_limit_mw: int
    max_limit_mw: int
    default_limit_mw: int
    limit_mw: int  # the power-management limit (what the setter writes)
    enforced_limit_mw: int
    max_clock_sm: int
    max_clock_mem: int
    ecc_mode: tuple[int, int]
    pcie_max_gen: int
    pcie_max_width: int
    nvlink_active: list[bool]  # one entry per link; empty = no NVLink (NotSupported)
    power_mw: int
    energy_mj: int
    temp_c: int
    util_gpu: int
    util_mem: int
    clock_sm: int
    clock_mem: int
    pstate: int
    clocks_event_reasons: int
    fan_pct: int
    processes: int
    #: field id -> (nvmlValueType_t, value); an id not here answers NVML_ERROR_NOT_SUPPORTED.
    fields: dict[int, tuple[int, float]] = field(default_factory=dict)
    #: field id -> an nvmlReturn_t other than success to answer (transient per-field errors).
    field_errors: dict[int, int] = field(default_factory=dict)
    #: function name -> the pynvml exception class that call raises on this device.
    raises: dict[str, type[Exception]] = field(default_factory=dict)

    def set_field(self, field_id: int, value: float, value_type: int = ULL) -> None:
        self.fields[field_id] = (value_type, value)


def h100_sxm(index: int = 0) -> FakeGpu:
    """An H100 SXM5 80GB: NVLink, ECC, row remapping, no fan (NotSupported)."""
    return FakeGpu(
        name="NVIDIA H100 80GB HBM3",
        uuid=f"GPU-9c3b3b8e-4f1c-7d2a-8e11-00000000000{index}",
        memory_total=81559 * _MIB,
        memory_used=40 * _GIB,
        compute_capability=(9, 0),
        mig_mode=(0, 0),
        min_limit_mw=200_000,
        max_limit_mw=700_000,
        default_limit_mw=700_000,
        limit_mw=700_000,
        enforced_limit_mw=700_000,
        max_clock_sm=1980,
        max_clock_mem=2619,
        ecc_mode=(1, 1),
        pcie_max_gen=5,
        pcie_max_width=16,
        nvlink_active=[True] * 18,
        power_mw=312_456,
        energy_mj=1_234_567_890,
        temp_c=45,
        util_gpu=87,
        util_mem=41,
        clock_sm=1980,
        clock_mem=2619,
        pstate=0,
        clocks_event_reasons=0x4,  # SW power cap
        fan_pct=0,
        processes=2,
        fields={
            pynvml.NVML_FI_DEV_POWER_INSTANT: (UINT, 325_110),
            pynvml.NVML_FI_DEV_MEMORY_TEMP: (UINT, 52),
            pynvml.NVML_FI_DEV_ECC_SBE_VOL_TOTAL: (ULL, 3),
            pynvml.NVML_FI_DEV_ECC_DBE_VOL_TOTAL: (ULL, 0),
            pynvml.NVML_FI_DEV_REMAPPED_COR: (UINT, 1),
            pynvml.NVML_FI_DEV_REMAPPED_UNC: (UINT, 0),
            pynvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER: (ULL, 7),
            pynvml.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL: (ULL, 2),
            pynvml.NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL: (ULL, 1),
            pynvml.NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL: (ULL, 0),
            pynvml.NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL: (ULL, 4),
        },
        raises={"nvmlDeviceGetFanSpeed": pynvml.NVMLError_NotSupported},
    )


def a100_mig(index: int = 0) -> FakeGpu:
    """An A100 SXM4 40GB with MIG enabled: utilization is NotSupported on the parent device and
    the process list needs root (NoPermission)."""
    return FakeGpu(
        name="NVIDIA A100-SXM4-40GB",
        uuid=f"GPU-1f2e3d4c-5b6a-7988-a0b1-c2d3e4f5a6b{index}",
        memory_total=40960 * _MIB,
        memory_used=12 * _GIB,
        compute_capability=(8, 0),
        mig_mode=(1, 1),
        min_limit_mw=100_000,
        max_limit_mw=400_000,
        default_limit_mw=400_000,
        limit_mw=300_000,
        enforced_limit_mw=300_000,
        max_clock_sm=1410,
        max_clock_mem=1215,
        ecc_mode=(1, 1),
        pcie_max_gen=4,
        pcie_max_width=16,
        nvlink_active=[True] * 12,
        power_mw=91_000,
        energy_mj=987_654_321,
        temp_c=33,
        util_gpu=0,
        util_mem=0,
        clock_sm=1410,
        clock_mem=1215,
        pstate=0,
        clocks_event_reasons=0,
        fan_pct=0,
        processes=0,
        fields={
            pynvml.NVML_FI_DEV_POWER_INSTANT: (ULL, 93_500),
            pynvml.NVML_FI_DEV_MEMORY_TEMP: (DOUBLE, 38.0),
            pynvml.NVML_FI_DEV_ECC_SBE_VOL_TOTAL: (ULL, 0),
            pynvml.NVML_FI_DEV_ECC_DBE_VOL_TOTAL: (ULL, 0),
            pynvml.NVML_FI_DEV_REMAPPED_COR: (UINT, 0),
            pynvml.NVML_FI_DEV_REMAPPED_UNC: (UINT, 0),
            pynvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER: (ULL, 0),
            pynvml.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL: (ULL, 0),
            pynvml.NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL: (ULL, 0),
            pynvml.NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL: (ULL, 0),
            pynvml.NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL: (ULL, 0),
        },
        raises={
            "nvmlDeviceGetUtilizationRates": pynvml.NVMLError_NotSupported,
            "nvmlDeviceGetComputeRunningProcesses": pynvml.NVMLError_NoPermission,
            "nvmlDeviceGetFanSpeed": pynvml.NVMLError_NotSupported,
        },
    )


def old_gpu(index: int = 0) -> FakeGpu:
    """A Tesla K80 on an R470 driver: field values, the energy counter (Volta+) and hence memory
    temperature are NotSupported, the clocks-event-reasons call predates the driver
    (FunctionNotFound), no MIG, no NVLink, passively cooled (no fan)."""
    return FakeGpu(
        name="Tesla K80",
        uuid=f"GPU-0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f{index}",
        memory_total=11441 * _MIB,
        memory_used=0,
        compute_capability=(3, 7),
        mig_mode=(0, 0),
        min_limit_mw=100_000,
        max_limit_mw=175_000,
        default_limit_mw=149_000,
        limit_mw=149_000,
        enforced_limit_mw=149_000,
        max_clock_sm=875,
        max_clock_mem=2505,
        ecc_mode=(1, 1),
        pcie_max_gen=3,
        pcie_max_width=16,
        nvlink_active=[],
        power_mw=58_000,
        energy_mj=0,
        temp_c=38,
        util_gpu=0,
        util_mem=0,
        clock_sm=324,
        clock_mem=324,
        pstate=8,
        clocks_event_reasons=0x1,  # GPU idle
        fan_pct=0,
        processes=0,
        raises={
            "nvmlDeviceGetFieldValues": pynvml.NVMLError_NotSupported,
            "nvmlDeviceGetTotalEnergyConsumption": pynvml.NVMLError_NotSupported,
            "nvmlDeviceGetCurrentClocksEventReasons": pynvml.NVMLError_FunctionNotFound,
            "nvmlDeviceGetFanSpeed": pynvml.NVMLError_NotSupported,
            "nvmlDeviceGetMigMode": pynvml.NVMLError_NotSupported,
        },
    )


class FakeNvml:
    """A module-like stand-in for ``pynvml``; pass it as ``NvmlBackend(host, nvml=FakeNvml())``.

    ``init_error`` makes ``nvmlInit`` raise that pynvml exception class (no driver, no
    permission...).
    """

    def __init__(
        self,
        gpus: list[FakeGpu] | None = None,
        *,
        init_error: type[BaseException] | None = None,
        driver_version: str = "550.54.15",
        nvml_version: str = "12.550.54.15",
    ) -> None:
        self.gpus = list(gpus) if gpus is not None else [h100_sxm()]
        self.init_error = init_error
        self.driver_version = driver_version
        self.nvml_version = nvml_version
        self.init_count = 0
        self.calls: Counter[str] = Counter()
        self.device_calls: Counter[int] = Counter()
        self.wait_timeouts: list[int] = []
        self.field_requests: list[tuple[int, list[int]]] = []  # (device index, field ids asked)
        self.event_sets: list[FakeEventSet] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith(_FORWARDED_PREFIXES):
            return getattr(pynvml, name)
        raise AttributeError(f"FakeNvml does not implement {name}")

    # -- test controls ---------------------------------------------------------------------------
    def push_xid(
        self,
        index: int,
        xid: int,
        *,
        gpu_instance: int = NO_INSTANCE,
        compute_instance: int = NO_INSTANCE,
    ) -> None:
        """Queue an XID from device ``index`` on every event set it is registered with."""
        for es in self.event_sets:
            if es.registered.get(index, 0) & pynvml.nvmlEventTypeXidCriticalError:
                es.queue.append(
                    FakeEventData(
                        device=FakeHandle(index),
                        eventType=pynvml.nvmlEventTypeXidCriticalError,
                        eventData=xid,
                        gpuInstanceId=gpu_instance,
                        computeInstanceId=compute_instance,
                    )
                )

    def reset_calls(self) -> None:
        self.calls.clear()
        self.device_calls.clear()
        self.wait_timeouts.clear()
        self.field_requests.clear()

    # -- plumbing --------------------------------------------------------------------------------
    def _enter(self, fn: str, handle: FakeHandle | None = None) -> FakeGpu:
        self.calls[fn] += 1
        if self.init_count <= 0:
            raise pynvml.NVMLError_Uninitialized()
        if handle is None:
            return None  # type: ignore[return-value]
        if not isinstance(handle, FakeHandle) or not 0 <= handle.index < len(self.gpus):
            raise pynvml.NVMLError_InvalidArgument()
        self.device_calls[handle.index] += 1
        gpu = self.gpus[handle.index]
        exc = gpu.raises.get(fn)
        if exc is not None:
            raise exc()
        return gpu

    # -- library ---------------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self.calls["nvmlInit"] += 1
        if self.init_error is not None:
            raise self.init_error()
        self.init_count += 1

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.init_count -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return self.driver_version

    def nvmlSystemGetNVMLVersion(self) -> str:
        self._enter("nvmlSystemGetNVMLVersion")
        return self.nvml_version

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError_InvalidArgument()
        return FakeHandle(index)

    def nvmlDeviceGetIndex(self, handle: FakeHandle) -> int:
        self._enter("nvmlDeviceGetIndex", handle)
        return handle.index

    # -- static properties -----------------------------------------------------------------------
    def nvmlDeviceGetName(self, handle: FakeHandle) -> str:
        return self._enter("nvmlDeviceGetName", handle).name

    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> str:
        return self._enter("nvmlDeviceGetUUID", handle).uuid

    def nvmlDeviceGetCudaComputeCapability(self, handle: FakeHandle) -> tuple[int, int]:
        return self._enter("nvmlDeviceGetCudaComputeCapability", handle).compute_capability

    def nvmlDeviceGetMigMode(self, handle: FakeHandle) -> list[int]:
        return list(self._enter("nvmlDeviceGetMigMode", handle).mig_mode)

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: FakeHandle) -> list[int]:
        gpu = self._enter("nvmlDeviceGetPowerManagementLimitConstraints", handle)
        return [gpu.min_limit_mw, gpu.max_limit_mw]

    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle: FakeHandle) -> int:
        return self._enter("nvmlDeviceGetPowerManagementDefaultLimit", handle).default_limit_mw

    def nvmlDeviceGetMaxClockInfo(self, handle: FakeHandle, clock_type: int) -> int:
        gpu = self._enter("nvmlDeviceGetMaxClockInfo", handle)
        return {pynvml.NVML_CLOCK_SM: gpu.max_clock_sm, pynvml.NVML_CLOCK_MEM: gpu.max_clock_mem}[
            clock_type
        ]

    def nvmlDeviceGetEccMode(self, handle: FakeHandle) -> list[int]:
        return list(self._enter("nvmlDeviceGetEccMode", handle).ecc_mode)

    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle: FakeHandle) -> int:
        return self._enter("nvmlDeviceGetMaxPcieLinkGeneration", handle).pcie_max_gen

    def nvmlDeviceGetMaxPcieLinkWidth(self, handle: FakeHandle) -> int:
        return self._enter("nvmlDeviceGetMaxPcieLinkWidth", handle).pcie_max_width

    def nvmlDeviceGetNvLinkState(self, handle: FakeHandle, link: int) -> int:
        gpu = self._enter("nvmlDeviceGetNvLinkState", handle)
        if not gpu.nvlink_active:
            raise pynvml.NVMLError_NotSupported()
        if not 0 <= link < len(gpu.nvlink_active):
            raise pynvml.NVMLError_InvalidArgument()
        return int(gpu.nvlink_active[link])

    # -- per-tick readings -----------------------------------------------------------------------
    def nvmlDeviceGetPowerUsage(self, handle: FakeHandle) -> int:
        return self._enter("nvmlDeviceGetPowerUsage", handle).power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeHandle) -> int:
        return self._enter("nvmlDeviceGetTotalEnergyConsumption", handle).energy_mj

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeHandle) -> int:
        return self._enter("nvmlDeviceGetEnforcedPowerLimit", handle).enforced_limit_mw

    def nvmlDeviceGetPowerManagementLimit(self, handle: FakeHandle) -> int:
        return self._enter("nvmlDeviceGetPowerManagementLimit", handle).limit_mw

    def nvmlDeviceGetTemperature(self, handle: FakeHandle, sensor: int) -> int:
        gpu = self._enter("nvmlDeviceGetTemperature", handle)
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise pynvml.NVMLError_InvalidArgument()
        return gpu.temp_c

    def nvmlDeviceGetUtilizationRates(self, handle: FakeHandle) -> Any:
        gpu = self._enter("nvmlDeviceGetUtilizationRates", handle)
        return pynvml.c_nvmlUtilization_t(gpu=gpu.util_gpu, memory=gpu.util_mem)

    def nvmlDeviceGetMemoryInfo(self, handle: FakeHandle) -> Any:
        gpu = self._enter("nvmlDeviceGetMemoryInfo", handle)
        return pynvml.c_nvmlMemory_t(
            total=gpu.memory_total,
            free=gpu.memory_total - gpu.memory_used,
            used=gpu.memory_used,
        )

    def nvmlDeviceGetClockInfo(self, handle: FakeHandle, clock_type: int) -> int:
        gpu = self._enter("nvmlDeviceGetClockInfo", handle)
        if clock_type == pynvml.NVML_CLOCK_SM:
            return gpu.clock_sm
        if clock_type == pynvml.NVML_CLOCK_MEM:
            return gpu.clock_mem
        raise pynvml.NVMLError_InvalidArgument()

    def nvmlDeviceGetPerformanceState(self, handle: FakeHandle) -> int:
        return self._enter("nvmlDeviceGetPerformanceState", handle).pstate

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: FakeHandle) -> int:
        return self._enter("nvmlDeviceGetCurrentClocksEventReasons", handle).clocks_event_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: FakeHandle) -> int:
        gpu = self._enter("nvmlDeviceGetCurrentClocksThrottleReasons", handle)
        return gpu.clocks_event_reasons

    def nvmlDeviceGetFanSpeed(self, handle: FakeHandle) -> int:
        return self._enter("nvmlDeviceGetFanSpeed", handle).fan_pct

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeHandle) -> list[FakeProcess]:
        gpu = self._enter("nvmlDeviceGetComputeRunningProcesses", handle)
        return [FakeProcess(pid=4000 + k, usedGpuMemory=_GIB) for k in range(gpu.processes)]

    def nvmlDeviceGetFieldValues(self, handle: FakeHandle, field_ids: list[int]) -> Any:
        gpu = self._enter("nvmlDeviceGetFieldValues", handle)
        self.field_requests.append((handle.index, list(field_ids)))
        values = (pynvml.c_nvmlFieldValue_t * len(field_ids))()
        for k, field_id in enumerate(field_ids):
            entry = values[k]
            entry.fieldId = field_id
            if field_id in gpu.field_errors:
                entry.nvmlReturn = gpu.field_errors[field_id]
            elif field_id in gpu.fields:
                value_type, value = gpu.fields[field_id]
                entry.valueType = value_type
                setattr(entry.value, _MEMBER[value_type], value)
                entry.nvmlReturn = pynvml.NVML_SUCCESS
            else:
                entry.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
        return values

    # -- events ----------------------------------------------------------------------------------
    def nvmlEventSetCreate(self) -> FakeEventSet:
        self._enter("nvmlEventSetCreate")
        es = FakeEventSet()
        self.event_sets.append(es)
        return es

    def nvmlDeviceRegisterEvents(
        self, handle: FakeHandle, event_types: int, event_set: FakeEventSet
    ) -> None:
        self._enter("nvmlDeviceRegisterEvents", handle)
        event_set.registered[handle.index] = event_set.registered.get(handle.index, 0) | int(
            event_types
        )

    def nvmlEventSetWait(self, event_set: FakeEventSet, timeoutms: int) -> FakeEventData:
        self._enter("nvmlEventSetWait")
        self.wait_timeouts.append(timeoutms)
        if event_set.freed:
            raise pynvml.NVMLError_InvalidArgument()
        if not event_set.queue:
            raise pynvml.NVMLError_Timeout()
        return event_set.queue.popleft()

    def nvmlEventSetFree(self, event_set: FakeEventSet) -> None:
        self._enter("nvmlEventSetFree")
        event_set.freed = True

    # -- control ---------------------------------------------------------------------------------
    def nvmlDeviceSetPowerManagementLimit(self, handle: FakeHandle, limit: int) -> None:
        gpu = self._enter("nvmlDeviceSetPowerManagementLimit", handle)
        if not gpu.min_limit_mw <= limit <= gpu.max_limit_mw:
            raise pynvml.NVMLError_InvalidArgument()
        gpu.limit_mw = limit
        gpu.enforced_limit_mw = limit
