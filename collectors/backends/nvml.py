"""NVIDIA GPUs through NVML (the ``nvidia-ml-py`` bindings, imported lazily as ``pynvml``).

Nothing else in accelpilot touches NVML. Every NVML error is translated here into
:mod:`accelpilot.errors` (``raise ... from e``).

**Probe.** :meth:`NvmlBackend.probe` initialises NVML once, counts the devices and caches the
answer; the reason names the fix (install nvidia-ml-py, load the driver, permissions, no devices).

**Per tick, per device** :meth:`NvmlBackend.read` makes at most these binding calls
(:data:`READ_CALLS`, 13; the unit tests assert the exact count):

====================================================  ==========================================
call                                                  columns
====================================================  ==========================================
``nvmlDeviceGetPowerUsage`` (mW)                      ``power_w``: a 1 s average on Ampere and
                                                      newer (except GA100), instantaneous before
``nvmlDeviceGetTotalEnergyConsumption`` (mJ)          ``energy_j`` (since driver load, Volta+)
``nvmlDeviceGetEnforcedPowerLimit`` (mW)              ``cap_w``
``nvmlDeviceGetTemperature(NVML_TEMPERATURE_GPU)``    ``temp_c``
``nvmlDeviceGetUtilizationRates``                     ``util_compute_pct``, ``util_mem_pct``
``nvmlDeviceGetMemoryInfo``                           ``mem_used_bytes``, ``mem_total_bytes``
``nvmlDeviceGetClockInfo`` x2 (SM, MEM)               ``clock_sm_mhz``, ``clock_mem_mhz``
``nvmlDeviceGetPerformanceState``                     ``pstate`` (P-state 32 = unknown -> None)
``nvmlDeviceGetCurrentClocksEventReasons``            ``throttle_reasons_mask`` (falls back to
                                                      ``...ClocksThrottleReasons`` on old drivers)
``nvmlDeviceGetFanSpeed``                             ``fan_pct``
``nvmlDeviceGetComputeRunningProcesses``              ``process_count`` (costly, ~ms: see
                                                      ``process_every``)
``nvmlDeviceGetFieldValues`` (one batched call)       see :data:`FIELD_METRICS`
====================================================  ==========================================

plus, once per tick for the whole host, ``nvmlEventSetWait(set, 0)`` until ``NVMLError_Timeout``
(one call when no XID is pending; two more per XID: the wait and ``nvmlDeviceGetIndex``).

**Field values** (one ``nvmlDeviceGetFieldValues`` call per device per tick, all ids at once):
``power_instant_w`` (``NVML_FI_DEV_POWER_INSTANT``, mW, where the binding defines it),
``mem_temp_c`` (``NVML_FI_DEV_MEMORY_TEMP``), ``ecc_corrected_total`` /
``ecc_uncorrected_total`` (``NVML_FI_DEV_ECC_SBE_VOL_TOTAL`` / ``..._DBE_VOL_TOTAL``: the
*volatile* counters, reset when the driver reloads, like ``energy_j``; the aggregate lifetime
counters are health inventory, not a rate signal), ``retired_pages_total``
(``RETIRED_SBE + RETIRED_DBE``, pre-Ampere page retirement), ``remapped_rows_total``
(``REMAPPED_COR + REMAPPED_UNC``, Ampere+ row remapping), ``pcie_replay_total``
(``PCIE_REPLAY_COUNTER``) and ``nvlink_errors_total`` (the four all-link totals: CRC flit, CRC
data, replay, recovery). Each entry is decoded by its ``valueType``. ECC fields are not asked for
when ECC is off, NVLink fields not when the device has no active link.

**Unsupported is remembered.** A metric the device does not support is ``None`` (never 0). The
first ``NVMLError_NotSupported`` (also ``FunctionNotFound``, a binding without the function, and
``NoPermission``: none of these change while the process runs) marks that query unsupported for
that device and later ticks skip the call; a field id whose entry returns NOT_SUPPORTED (or
INVALID_ARGUMENT, what older drivers answer for ids they do not know) is dropped from that
device's batch, and the batch call itself is skipped once it raises NotSupported or has no ids
left. So an H100 SXM (no fan) makes 13 calls on the first tick and 12 after.

**Other errors** (GPU lost, unknown, ...) leave the affected columns ``None`` for that tick and
raise one ``DeviceEvent(kind="fault", code=<NVML error code>)`` when a device's error code
changes (not every tick). Values outside the physical bounds of
:data:`accelpilot.schemas.metrics.METRICS` (NVML's "not available" sentinels, a fan above 100%)
become ``None`` and are counted in :attr:`NvmlBackend.out_of_range`, because one out-of-range
value would make ingest reject the whole host sample.

**XID events.** One NVML event set for the host, every device registered for
``nvmlEventTypeXidCriticalError``; drained without blocking (timeout 0) at most
``max_events_per_tick`` per tick into ``DeviceEvent(kind="xid", code=<XID>)``.

**Power caps.** :meth:`NvmlBackend.power_cap_w` is the enforced limit.
:meth:`NvmlBackend.set_power_cap_w` reads the power-management limit (the value the setter
writes; the enforced one may sit lower under an out-of-band cap), skips the write when they differ
by less than 1 W, and otherwise calls ``nvmlDeviceSetPowerManagementLimit`` in mW; it needs root
or CAP_SYS_ADMIN.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from accelpilot.collectors.device import (
    Availability,
    Capabilities,
    DeviceBackend,
    DeviceInfo,
    PowerLimits,
    Reading,
)
from accelpilot.errors import ActuationError, BackendError
from accelpilot.schemas.metrics import METRICS
from accelpilot.schemas.samples import DeviceEvent

log = logging.getLogger(__name__)

REASON_NOT_INSTALLED = (
    "nvidia-ml-py not installed (pip install nvidia-ml-py; not the unofficial pynvml 11.x)"
)
REASON_NO_DRIVER = "NVIDIA driver not loaded (libnvidia-ml.so.1 not found)"
REASON_NO_PERMISSION = (
    "no permission to use the NVIDIA devices (NVML: insufficient permissions; check access to "
    "/dev/nvidia* or the container's GPU runtime)"
)
REASON_VERSION_MISMATCH = (
    "NVIDIA driver/library version mismatch (NVML: RM version mismatch; reload the nvidia kernel "
    "module or reboot)"
)
REASON_NO_DEVICES = "no NVIDIA devices"

#: Columns every :class:`~accelpilot.collectors.device.Reading` of this backend carries.
COLUMNS: tuple[str, ...] = (
    "power_w",
    "power_instant_w",
    "energy_j",
    "cap_w",
    "temp_c",
    "mem_temp_c",
    "util_compute_pct",
    "util_mem_pct",
    "mem_used_bytes",
    "mem_total_bytes",
    "clock_sm_mhz",
    "clock_mem_mhz",
    "pstate",
    "throttle_reasons_mask",
    "fan_pct",
    "ecc_corrected_total",
    "ecc_uncorrected_total",
    "retired_pages_total",
    "remapped_rows_total",
    "pcie_replay_total",
    "nvlink_errors_total",
    "process_count",
)

#: The binding calls one device costs per tick at most (see the module docstring).
READ_CALLS: tuple[str, ...] = (
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetEnforcedPowerLimit",
    "nvmlDeviceGetTemperature",
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetClockInfo",  # SM
    "nvmlDeviceGetClockInfo",  # MEM
    "nvmlDeviceGetPerformanceState",
    "nvmlDeviceGetCurrentClocksEventReasons",
    "nvmlDeviceGetFanSpeed",
    "nvmlDeviceGetComputeRunningProcesses",
    "nvmlDeviceGetFieldValues",
)

#: metric -> (pynvml constant names summed into it, divisor to the metric's unit).
FIELD_METRICS: dict[str, tuple[tuple[str, ...], float]] = {
    "power_instant_w": (("NVML_FI_DEV_POWER_INSTANT",), 1000.0),  # mW
    "mem_temp_c": (("NVML_FI_DEV_MEMORY_TEMP",), 1.0),
    "ecc_corrected_total": (("NVML_FI_DEV_ECC_SBE_VOL_TOTAL",), 1.0),
    "ecc_uncorrected_total": (("NVML_FI_DEV_ECC_DBE_VOL_TOTAL",), 1.0),
    "retired_pages_total": (("NVML_FI_DEV_RETIRED_SBE", "NVML_FI_DEV_RETIRED_DBE"), 1.0),
    "remapped_rows_total": (("NVML_FI_DEV_REMAPPED_COR", "NVML_FI_DEV_REMAPPED_UNC"), 1.0),
    "pcie_replay_total": (("NVML_FI_DEV_PCIE_REPLAY_COUNTER",), 1.0),
    "nvlink_errors_total": (
        (
            "NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL",
            "NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL",
            "NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL",
            "NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL",
        ),
        1.0,
    ),
}
_ECC_METRICS = frozenset({"ecc_corrected_total", "ecc_uncorrected_total"})
_NVLINK_METRICS = frozenset({"nvlink_errors_total"})

# nvmlValueType_t -> the c_nvmlValue_t member holding the value.
_VALUE_MEMBER = {
    0: "dVal",
    1: "uiVal",
    2: "ulVal",
    3: "ullVal",
    4: "sllVal",
    5: "siVal",
    6: "usVal",
}
# Per-entry field-value return codes that mean "never on this device".
_FIELD_UNSUPPORTED_NAMES = (
    "NVML_ERROR_NOT_SUPPORTED",
    "NVML_ERROR_INVALID_ARGUMENT",
    "NVML_ERROR_NO_PERMISSION",
    "NVML_ERROR_FUNCTION_NOT_FOUND",
)
# Exceptions that mean "never on this device, for this process". NVMLLibraryMismatchError is not
# an NVMLError: pynvml raises it from nvmlDeviceGetComputeRunningProcesses when the driver predates
# the _v3 function the binding calls.
_UNSUPPORTED_ERROR_NAMES = (
    "NVMLError_NotSupported",
    "NVMLError_FunctionNotFound",
    "NVMLError_NoPermission",
    "NVMLLibraryMismatchError",
)
_EVENT_REASONS = "nvmlDeviceGetCurrentClocksEventReasons"
_THROTTLE_REASONS = "nvmlDeviceGetCurrentClocksThrottleReasons"
_PSTATE_UNKNOWN = 32
_NO_INSTANCE = 0xFFFFFFFF  # gpuInstanceId / computeInstanceId when the event is not MIG-scoped
_SET_TOLERANCE_W = 1.0


class _Unsupported(Exception):
    """Internal: the binding lacks the function."""


@dataclass(slots=True)
class _Gpu:
    info: DeviceInfo
    handle: Any
    fields: list[tuple[str, int]]  # (metric, field id) still asked for, in batch order
    throttle_fn: str
    unsupported: set[str] = field(default_factory=set)
    errors: list[tuple[str, Any]] = field(default_factory=list)  # this tick's (call, NVMLError)
    fault_code: int | None = None
    process_count: float | None = None


class NvmlBackend(DeviceBackend):
    """Every NVIDIA GPU NVML sees, read in one pass per tick.

    ``nvml`` is the bindings module (default: ``import pynvml`` from nvidia-ml-py, on first
    probe); tests pass :class:`tests.fakes.fake_nvml.FakeNvml`. ``clock_ns`` stamps events (wall
    clock). ``process_every`` reads the process list every n-th tick only (it costs milliseconds
    per device; in between the column repeats the last count).
    """

    name = "nvml"

    def __init__(
        self,
        host_id: str,
        nvml: Any | None = None,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        process_every: int = 1,
        max_events_per_tick: int = 256,
    ) -> None:
        if process_every < 1:
            raise ValueError("process_every must be >= 1")
        self.host_id = host_id
        self._nvml: Any = nvml  # the pynvml module, or a stand-in; None until probed
        self._clock_ns = clock_ns
        self._process_every = process_every
        self._max_events = max_events_per_tick
        self._availability: Availability | None = None
        self._initialized = False
        self._gpus: list[_Gpu] | None = None
        self._event_set: Any = None
        self._tick = 0
        self._unsupported_errors: tuple[type[BaseException], ...] = ()
        self._field_unsupported_codes: frozenset[int] = frozenset()
        #: metric -> how many values were dropped for lying outside METRICS bounds.
        self.out_of_range: dict[str, int] = {}

    # -- availability ---------------------------------------------------------------------------
    def _probe(self) -> Availability:
        if self._nvml is None:
            try:
                import pynvml  # type: ignore[import-untyped,unused-ignore]
            except ImportError:
                return Availability(False, REASON_NOT_INSTALLED)
            if hasattr(pynvml, "__path__") and not hasattr(pynvml, _EVENT_REASONS):
                # A package directory with pre-R535 bindings: the unofficial pynvml 11.x.
                log.warning("'pynvml' is the unofficial 11.x package; pip install nvidia-ml-py")
            self._nvml = pynvml
        nv = self._nvml
        try:
            self._unsupported_errors = tuple(
                getattr(nv, n) for n in _UNSUPPORTED_ERROR_NAMES if hasattr(nv, n)
            )
            self._field_unsupported_codes = frozenset(
                getattr(nv, n) for n in _FIELD_UNSUPPORTED_NAMES if hasattr(nv, n)
            )
            nv.nvmlInit()
        except Exception as e:  # probe never raises; the reason carries it
            return Availability(False, self._init_reason(e))
        self._initialized = True
        try:
            count = int(nv.nvmlDeviceGetCount())
        except Exception as e:  # probe never raises; the reason carries it
            self._shutdown()
            return Availability(False, self._init_reason(e))
        if count == 0:
            self._shutdown()
            return Availability(False, REASON_NO_DEVICES)
        return Availability(True, f"{count} NVIDIA device(s)")

    def _init_reason(self, e: BaseException) -> str:
        nv = self._nvml
        if _is(e, nv, "NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded"):
            return REASON_NO_DRIVER
        if _is(e, nv, "NVMLError_NoPermission"):
            return REASON_NO_PERMISSION
        if _is(e, nv, "NVMLError_LibRmVersionMismatch"):
            return REASON_VERSION_MISMATCH
        if _is(e, nv, "NVMLError"):
            return f"NVML failed to start: {e}"
        return f"NVML failed to start: {type(e).__name__}: {e}"

    # -- discovery ------------------------------------------------------------------------------
    def discover(self) -> list[DeviceInfo]:
        return [g.info for g in self._devices()]

    def _devices(self) -> list[_Gpu]:
        if self._gpus is None:
            availability = self.probe()
            if not availability.available:
                raise BackendError(f"the nvml backend cannot run: {availability.reason}")
            self._gpus = self._discover()
        return self._gpus

    def _discover(self) -> list[_Gpu]:
        nv = self._nvml
        try:
            count = int(nv.nvmlDeviceGetCount())
        except nv.NVMLError as e:
            raise BackendError(f"NVML could not count devices: {e}") from e
        driver = _text(self._system_query("nvmlSystemGetDriverVersion"))
        library = _text(self._system_query("nvmlSystemGetNVMLVersion"))
        self._event_set = self._create_event_set()
        gpus = []
        for index in range(count):
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(index)
            except nv.NVMLError as e:
                raise BackendError(f"NVML could not open GPU {index}: {e}") from e
            gpus.append(self._describe(index, handle, driver, library))
        return gpus

    def _describe(self, index: int, handle: Any, driver: str | None, library: str | None) -> _Gpu:
        nv = self._nvml
        errors: dict[str, str] = {}

        def q(fn: str, *args: Any) -> Any:
            return self._capability_query(errors, fn, handle, *args)

        memory = q("nvmlDeviceGetMemoryInfo")
        cc = q("nvmlDeviceGetCudaComputeCapability")
        mig = q("nvmlDeviceGetMigMode")
        constraints = q("nvmlDeviceGetPowerManagementLimitConstraints")
        default_mw = q("nvmlDeviceGetPowerManagementDefaultLimit")
        ecc = q("nvmlDeviceGetEccMode")
        limits = None
        if constraints is not None and default_mw is not None:
            limits = PowerLimits(
                min_w=constraints[0] / 1000.0,
                max_w=constraints[1] / 1000.0,
                default_w=default_mw / 1000.0,
            )
        ecc_enabled = None if ecc is None else int(ecc[0]) == nv.NVML_FEATURE_ENABLED
        nvlinks = self._active_nvlinks(handle, errors)
        xid_events = self._register_xid(handle, errors)
        caps = Capabilities(
            compute_capability=None if cc is None else f"{cc[0]}.{cc[1]}",
            mig_supported=mig is not None,
            mig_enabled=mig is not None and int(mig[0]) == nv.NVML_DEVICE_MIG_ENABLE,
            power_limits=limits,
            max_clock_sm_mhz=_float(q("nvmlDeviceGetMaxClockInfo", nv.NVML_CLOCK_SM)),
            max_clock_mem_mhz=_float(q("nvmlDeviceGetMaxClockInfo", nv.NVML_CLOCK_MEM)),
            ecc_enabled=ecc_enabled,
            pcie_gen=_int(q("nvmlDeviceGetMaxPcieLinkGeneration")),
            pcie_width=_int(q("nvmlDeviceGetMaxPcieLinkWidth")),
            nvlink_links=nvlinks,
            driver_version=driver,
            library_version=library,
            extra={"xid_events": xid_events, **({"query_errors": errors} if errors else {})},
        )
        info = DeviceInfo(
            device_id=f"{self.host_id}/gpu{index}",
            backend=self.name,
            kind="gpu",
            vendor="nvidia",
            model=_text(q("nvmlDeviceGetName")) or "NVIDIA GPU",
            index=index,
            uuid=_text(q("nvmlDeviceGetUUID")),
            memory_total_bytes=None if memory is None else int(memory.total),
            capabilities=caps,
        )
        fields: list[tuple[str, int]] = []
        for metric, (names, _divisor) in FIELD_METRICS.items():
            if metric in _ECC_METRICS and ecc_enabled is False:
                continue
            if metric in _NVLINK_METRICS and nvlinks == 0:
                continue
            fields.extend((metric, int(getattr(nv, n))) for n in names if hasattr(nv, n))
        throttle_fn = _EVENT_REASONS if hasattr(nv, _EVENT_REASONS) else _THROTTLE_REASONS
        return _Gpu(info=info, handle=handle, fields=fields, throttle_fn=throttle_fn)

    def _capability_query(self, errors: dict[str, str], fn: str, *args: Any) -> Any:
        """One discovery query: unsupported or failing -> None (failures noted in ``errors``)."""
        nv = self._nvml
        call = getattr(nv, fn, None)
        if call is None:
            return None
        try:
            return call(*args)
        except self._unsupported_errors:
            return None
        except nv.NVMLError as e:
            if _is(e, nv, "NVMLError_GpuIsLost"):
                raise BackendError(f"NVML: GPU lost during discovery ({fn}): {e}") from e
            errors[fn] = str(e)
            return None

    def _system_query(self, fn: str) -> Any:
        nv = self._nvml
        call = getattr(nv, fn, None)
        if call is None:
            return None
        try:
            return call()
        except nv.NVMLError:
            return None

    def _active_nvlinks(self, handle: Any, errors: dict[str, str]) -> int | None:
        """Active NVLink links: probe links 0.. until the driver says there are no more."""
        nv = self._nvml
        if not hasattr(nv, "nvmlDeviceGetNvLinkState"):
            return None
        active = 0
        for link in range(int(getattr(nv, "NVML_NVLINK_MAX_LINKS", 18))):
            try:
                active += 1 if nv.nvmlDeviceGetNvLinkState(handle, link) else 0
            except nv.NVMLError as e:
                if link == 0 and not _is(
                    e, nv, "NVMLError_NotSupported", "NVMLError_InvalidArgument"
                ):
                    errors["nvmlDeviceGetNvLinkState"] = str(e)
                    return None
                break  # past the last link, or no NVLink at all (-> 0)
        return active

    def _create_event_set(self) -> Any:
        nv = self._nvml
        if not hasattr(nv, "nvmlEventSetCreate"):
            return None
        try:
            return nv.nvmlEventSetCreate()
        except nv.NVMLError as e:
            log.warning("NVML event set unavailable, no XID events: %s", e)
            return None

    def _register_xid(self, handle: Any, errors: dict[str, str]) -> bool:
        nv = self._nvml
        if self._event_set is None:
            return False
        try:
            nv.nvmlDeviceRegisterEvents(handle, nv.nvmlEventTypeXidCriticalError, self._event_set)
        except nv.NVMLError as e:
            if not isinstance(e, self._unsupported_errors):
                errors["nvmlDeviceRegisterEvents"] = str(e)
            return False
        return True

    # -- sampling -------------------------------------------------------------------------------
    def read(self) -> Reading:
        gpus = self._devices()
        nv = self._nvml
        n = len(gpus)
        cols: dict[str, list[float | None]] = {c: [None] * n for c in COLUMNS}
        events: list[DeviceEvent] = []
        read_processes = self._tick % self._process_every == 0
        self._tick += 1
        for i, g in enumerate(gpus):
            g.errors.clear()
            put = self._putter(cols, i)
            put("power_w", _per(self._q(g, "power", "nvmlDeviceGetPowerUsage"), 1000.0))
            energy = self._q(g, "energy", "nvmlDeviceGetTotalEnergyConsumption")
            put("energy_j", _per(energy, 1000.0))
            put("cap_w", _per(self._q(g, "cap", "nvmlDeviceGetEnforcedPowerLimit"), 1000.0))
            put("temp_c", self._q(g, "temp", "nvmlDeviceGetTemperature", nv.NVML_TEMPERATURE_GPU))
            util = self._q(g, "util", "nvmlDeviceGetUtilizationRates")
            if util is not None:
                put("util_compute_pct", util.gpu)
                put("util_mem_pct", util.memory)
            mem = self._q(g, "memory", "nvmlDeviceGetMemoryInfo")
            if mem is not None:
                put("mem_used_bytes", mem.used)
                put("mem_total_bytes", mem.total)
            put("clock_sm_mhz", self._q(g, "clock_sm", "nvmlDeviceGetClockInfo", nv.NVML_CLOCK_SM))
            mem_clock = self._q(g, "clock_mem", "nvmlDeviceGetClockInfo", nv.NVML_CLOCK_MEM)
            put("clock_mem_mhz", mem_clock)
            pstate = self._q(g, "pstate", "nvmlDeviceGetPerformanceState")
            put("pstate", None if pstate == _PSTATE_UNKNOWN else pstate)
            put("throttle_reasons_mask", self._throttle_reasons(g))
            put("fan_pct", self._q(g, "fan", "nvmlDeviceGetFanSpeed"))
            if read_processes:
                procs = self._q(g, "processes", "nvmlDeviceGetComputeRunningProcesses")
                g.process_count = None if procs is None else float(len(procs))
            put("process_count", g.process_count)
            self._read_fields(g, put)
            fault = self._fault_event(g)
            if fault is not None:
                events.append(fault)
        events.extend(self._drain_xids(gpus))
        return Reading(metrics=cols, events=events)

    def _q(self, g: _Gpu, key: str, fn: str, *args: Any) -> Any:
        """One per-tick query; None when unsupported (remembered) or failing (this tick)."""
        if key in g.unsupported:
            return None
        nv = self._nvml
        call = getattr(nv, fn, None)
        if call is None:
            g.unsupported.add(key)
            return None
        try:
            return call(g.handle, *args)
        except self._unsupported_errors:
            g.unsupported.add(key)
            return None
        except nv.NVMLError as e:
            g.errors.append((fn, e))
            return None

    def _throttle_reasons(self, g: _Gpu) -> Any:
        value = self._q(g, g.throttle_fn, g.throttle_fn)
        if value is None and g.throttle_fn in g.unsupported and g.throttle_fn == _EVENT_REASONS:
            # A driver older than the clocks-event rename (R535): use the old name from now on.
            g.throttle_fn = _THROTTLE_REASONS
            value = self._q(g, g.throttle_fn, g.throttle_fn)
        return value

    def _read_fields(self, g: _Gpu, put: Callable[[str, Any], None]) -> None:
        if not g.fields:
            return
        values = self._q(g, "field_values", "nvmlDeviceGetFieldValues", [f for _, f in g.fields])
        if values is None:
            return
        success = self._nvml.NVML_SUCCESS
        totals: dict[str, float] = {}
        failed: set[str] = set()
        keep: list[tuple[str, int]] = []
        for (metric, field_id), fv in zip(g.fields, values, strict=False):
            ret = int(fv.nvmlReturn)
            if ret in self._field_unsupported_codes:
                continue  # dropped from the batch for good
            keep.append((metric, field_id))
            value = _field_value(fv) if ret == success else None
            if value is None:
                failed.add(metric)
            else:
                totals[metric] = totals.get(metric, 0.0) + value
        if len(keep) != len(g.fields):
            g.fields = keep
        for metric, total in totals.items():
            if metric not in failed:
                put(metric, total / FIELD_METRICS[metric][1])

    def _putter(self, cols: dict[str, list[float | None]], i: int) -> Callable[[str, Any], None]:
        def put(metric: str, value: Any) -> None:
            if value is None:
                return
            v = float(value)
            spec = METRICS[metric]
            if spec.low <= v <= spec.high:
                cols[metric][i] = v
                return
            seen = self.out_of_range.get(metric, 0)
            self.out_of_range[metric] = seen + 1
            if seen == 0:
                log.warning(
                    "nvml: %s=%r outside [%g, %g] %s; dropped (further ones silently)",
                    metric,
                    v,
                    spec.low,
                    spec.high,
                    spec.unit,
                )

        return put

    def _fault_event(self, g: _Gpu) -> DeviceEvent | None:
        if not g.errors:
            g.fault_code = None
            return None
        fn, err = g.errors[0]
        code = int(getattr(err, "value", -1))
        if code == g.fault_code:
            return None
        g.fault_code = code
        return DeviceEvent(
            device_id=g.info.device_id,
            kind="fault",
            code=code,
            ts_ns=self._clock_ns(),
            detail=f"{fn}: {err}",
        )

    def _drain_xids(self, gpus: list[_Gpu]) -> list[DeviceEvent]:
        if self._event_set is None:
            return []
        nv = self._nvml
        events: list[DeviceEvent] = []
        for _ in range(self._max_events):
            try:
                data = nv.nvmlEventSetWait(self._event_set, 0)
            except nv.NVMLError_Timeout:
                break
            except nv.NVMLError as e:
                log.warning("nvml: waiting for XID events failed: %s", e)
                break
            try:
                index = int(nv.nvmlDeviceGetIndex(data.device))
            except nv.NVMLError as e:
                log.warning("nvml: XID %s from an unidentifiable device: %s", data.eventData, e)
                continue
            if not 0 <= index < len(gpus):
                log.warning("nvml: XID %s from unknown GPU index %d", data.eventData, index)
                continue
            gi = int(getattr(data, "gpuInstanceId", _NO_INSTANCE))
            ci = int(getattr(data, "computeInstanceId", _NO_INSTANCE))
            detail = "" if gi == _NO_INSTANCE else f"gpu_instance={gi} compute_instance={ci}"
            events.append(
                DeviceEvent(
                    device_id=gpus[index].info.device_id,
                    kind="xid",
                    code=int(data.eventData),
                    ts_ns=self._clock_ns(),
                    detail=detail,
                )
            )
        return events

    # -- power caps -----------------------------------------------------------------------------
    def power_cap_w(self, index: int) -> float | None:
        g = self._gpu(index, BackendError)
        nv = self._nvml
        try:
            return float(nv.nvmlDeviceGetEnforcedPowerLimit(g.handle)) / 1000.0
        except self._unsupported_errors:
            return None
        except nv.NVMLError as e:
            raise BackendError(f"reading the power limit of GPU {index} failed: {e}") from e

    def set_power_cap_w(self, index: int, cap_w: float) -> None:
        g = self._gpu(index, ActuationError)
        nv = self._nvml
        if not math.isfinite(cap_w) or cap_w <= 0:
            raise ActuationError(
                f"power limit {cap_w!r} W for GPU {index} is not a positive number"
            )
        limits = g.info.capabilities.power_limits
        if limits is not None and not limits.min_w <= cap_w <= limits.max_w:
            raise ActuationError(
                f"{cap_w:g} W is outside GPU {index}'s power-limit range "
                f"[{limits.min_w:g}, {limits.max_w:g}] W"
            )
        try:
            current_w = float(nv.nvmlDeviceGetPowerManagementLimit(g.handle)) / 1000.0
        except nv.NVMLError as e:
            raise _actuation_error(nv, index, "reading", cap_w, e) from e
        if abs(current_w - cap_w) < _SET_TOLERANCE_W:
            return
        try:
            nv.nvmlDeviceSetPowerManagementLimit(g.handle, round(cap_w * 1000.0))
        except nv.NVMLError as e:
            raise _actuation_error(nv, index, "setting", cap_w, e) from e
        log.info("nvml: GPU %d power limit %.0f W -> %.0f W", index, current_w, cap_w)

    def _gpu(self, index: int, error: type[BackendError] | type[ActuationError]) -> _Gpu:
        try:
            gpus = self._devices()
        except BackendError as e:
            raise error(str(e)) from e
        if not 0 <= index < len(gpus):
            raise error(f"no NVIDIA GPU with index {index} (this host has {len(gpus)})")
        return gpus[index]

    # -- teardown -------------------------------------------------------------------------------
    def close(self) -> None:
        nv = self._nvml
        if self._event_set is not None and nv is not None:
            try:
                nv.nvmlEventSetFree(self._event_set)
            except nv.NVMLError as e:
                log.debug("nvml: freeing the event set failed: %s", e)
        self._event_set = None
        self._gpus = None
        self._shutdown()
        self._availability = None

    def _shutdown(self) -> None:
        nv = self._nvml
        if self._initialized and nv is not None:
            try:
                nv.nvmlShutdown()
            except nv.NVMLError as e:
                log.debug("nvml: shutdown failed: %s", e)
        self._initialized = False


def _actuation_error(nv: Any, index: int, verb: str, cap_w: float, e: Any) -> ActuationError:
    if _is(e, nv, "NVMLError_NoPermission"):
        return ActuationError(
            f"{verb} the power limit of GPU {index} needs root / CAP_SYS_ADMIN (NVML: {e})"
        )
    if _is(e, nv, "NVMLError_NotSupported"):
        return ActuationError(f"GPU {index} does not support power limits (NVML: {e})")
    if _is(e, nv, "NVMLError_InvalidArgument"):
        return ActuationError(f"{cap_w:g} W is not a valid power limit for GPU {index} (NVML: {e})")
    return ActuationError(f"{verb} the power limit of GPU {index} failed (NVML: {e})")


def _is(e: BaseException, nv: Any, *names: str) -> bool:
    classes = tuple(getattr(nv, n) for n in names if hasattr(nv, n))
    return bool(classes) and isinstance(e, classes)


def _field_value(fv: Any) -> float | None:
    member = _VALUE_MEMBER.get(int(fv.valueType))
    return None if member is None else float(getattr(fv.value, member))


def _per(value: Any, divisor: float) -> float | None:
    """``value / divisor`` (a division: mJ / 1000 stays 1234567.89, not ...890000001)."""
    return None if value is None else float(value) / divisor


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)
