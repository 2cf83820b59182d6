"""AMD GPUs through AMD SMI (the ``amdsmi`` Python package that ships with ROCm), imported lazily.

Nothing else in accelpilot touches amdsmi; its errors are translated here into
:mod:`accelpilot.errors` (``raise ... from e``).

**Untested against hardware.** No AMD GPU or ROCm install was available while this was written:
every call below follows the AMD SMI Python API as documented for ROCm 6.x (names and units from
``amdsmi_interface.py`` and the ``amdsmi.h`` doxygen) and is exercised only against a minimal fake
module in ``tests/unit/test_amdsmi_backend.py``. In particular these are unverified on a real
device: the init flag (``AmdSmiInitFlags.INIT_AMD_GPUS``), the power-info keys (ROCm 6:
``average_socket_power`` / ``current_socket_power``, ROCm 7: ``socket_power``; "N/A" strings where
a device lacks one), the energy-counter keys (``energy_accumulator``, formerly ``power``, times
``counter_resolution`` in microjoules), temperatures in degrees C, power caps in microwatts, the
clock keys (``clk``, formerly ``cur_clk``) and the error-code names used to recognise "not
supported" and "no permission".

Per tick, per device (at most 11 calls, fewer once unsupported ones are remembered):

====================================================  ==========================================
call                                                  columns
====================================================  ==========================================
``amdsmi_get_power_info``                             ``power_w`` (average socket power, or the
                                                      unified/current one where that is all the
                                                      device has), ``power_instant_w`` (current)
``amdsmi_get_energy_count``                           ``energy_j`` (accumulator x resolution uJ)
``amdsmi_get_power_cap_info``                         ``cap_w`` (uW -> W)
``amdsmi_get_temp_metric`` (HOTSPOT/JUNCTION; EDGE    ``temp_c`` (the die's hotspot; the edge
only where the hotspot is unsupported)                sensor only as a fallback)
``amdsmi_get_temp_metric`` (VRAM)                     ``mem_temp_c``
``amdsmi_get_gpu_activity``                           ``util_compute_pct`` (gfx_activity),
                                                      ``util_mem_pct`` (umc_activity)
``amdsmi_get_gpu_memory_usage(VRAM)``                 ``mem_used_bytes`` (total: from discovery)
``amdsmi_get_clock_info`` x2 (GFX, MEM)               ``clock_sm_mhz``, ``clock_mem_mhz``
``amdsmi_get_gpu_total_ecc_count``                    ``ecc_corrected_total``,
                                                      ``ecc_uncorrected_total``
====================================================  ==========================================

Not read here: pstate, throttle reasons, fan, retired pages, PCIe replay, process count, XID-like
events (``amdsmi_get_gpu_metrics_info`` would give several of these in one call: a later
optimisation). As in the nvml backend: unsupported -> ``None`` (never 0) and not asked again; other
errors -> ``None`` for that tick plus one ``DeviceEvent(kind="fault")`` per change; values outside
:data:`accelpilot.schemas.metrics.METRICS` bounds -> ``None``, counted in ``out_of_range``.
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

REASON_NOT_INSTALLED = "amdsmi not installed (it ships with ROCm: /opt/rocm/share/amd_smi)"
REASON_NO_PERMISSION = (
    "no permission to use the AMD GPUs (AMD SMI: permission denied; add the user to the 'render' "
    "and 'video' groups or grant the container /dev/kfd and /dev/dri)"
)
REASON_NO_DEVICES = "no AMD GPUs"

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
    "ecc_corrected_total",
    "ecc_uncorrected_total",
)

# AmdSmiRetCode member names (ROCm 6.x, then newer spellings) and the AMDSMI_STATUS_* value from
# amdsmi.h to use where the package has neither.
_STATUS: dict[str, tuple[tuple[str, ...], int]] = {
    "NOT_SUPPORTED": (("ERR_NOT_SUPPORTED", "STATUS_NOT_SUPPORTED"), 2),
    "NOT_IMPL": (("NOT_IMPLEMENTED", "STATUS_NOT_YET_IMPLEMENTED"), 3),
    "NO_PERM": (("ERR_NO_PERM", "STATUS_NO_PERM"), 10),
}
_SET_TOLERANCE_W = 1.0
_UW_PER_W = 1e6


@dataclass(slots=True)
class _Gpu:
    info: DeviceInfo
    handle: Any
    unsupported: set[str] = field(default_factory=set)
    errors: list[tuple[str, BaseException]] = field(default_factory=list)
    fault_code: int | None = None


class AmdSmiBackend(DeviceBackend):
    """Every AMD GPU AMD SMI sees. ``amdsmi`` is the module (default: ``import amdsmi``)."""

    name = "amdsmi"

    def __init__(
        self,
        host_id: str,
        amdsmi: Any | None = None,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.host_id = host_id
        self._smi: Any = amdsmi  # the amdsmi module, or a stand-in; None until probed
        self._clock_ns = clock_ns
        self._availability: Availability | None = None
        self._initialized = False
        self._handles: list[Any] = []
        self._gpus: list[_Gpu] | None = None
        self.out_of_range: dict[str, int] = {}

    # -- availability ---------------------------------------------------------------------------
    def _probe(self) -> Availability:
        if self._smi is None:
            try:
                import amdsmi  # type: ignore[import-not-found,unused-ignore]
            except ImportError:
                return Availability(False, REASON_NOT_INSTALLED)
            except Exception as e:  # the package loads libamd_smi.so at import time
                return Availability(
                    False,
                    f"amdsmi is installed but its library does not load ({type(e).__name__}: {e});"
                    " install the amd-smi-lib package of the same ROCm release",
                )
            self._smi = amdsmi
        smi = self._smi
        try:
            flags = getattr(smi, "AmdSmiInitFlags", None)
            flag = getattr(flags, "INIT_AMD_GPUS", None) or getattr(flags, "AMD_GPUS", None)
            if flag is not None:
                smi.amdsmi_init(flag)
            else:
                smi.amdsmi_init()
        except Exception as e:  # probe never raises; the reason carries it
            if self._code(e) == self._status("NO_PERM"):
                return Availability(False, REASON_NO_PERMISSION)
            return Availability(False, f"AMD SMI failed to start (amdgpu driver not loaded?): {e}")
        self._initialized = True
        try:
            self._handles = list(smi.amdsmi_get_processor_handles())
        except Exception as e:  # probe never raises
            self._shutdown()
            return Availability(False, f"AMD SMI could not list GPUs: {e}")
        if not self._handles:
            self._shutdown()
            return Availability(False, REASON_NO_DEVICES)
        return Availability(True, f"{len(self._handles)} AMD GPU(s)")

    # -- discovery ------------------------------------------------------------------------------
    def discover(self) -> list[DeviceInfo]:
        return [g.info for g in self._devices()]

    def _devices(self) -> list[_Gpu]:
        if self._gpus is None:
            availability = self.probe()
            if not availability.available:
                raise BackendError(f"the amdsmi backend cannot run: {availability.reason}")
            library = _lib_version(self._static("amdsmi_get_lib_version"))
            self._gpus = [self._describe(i, h, library) for i, h in enumerate(self._handles)]
        return self._gpus

    def _describe(self, index: int, handle: Any, library: str | None) -> _Gpu:
        smi = self._smi
        vram = smi.AmdSmiMemoryType.VRAM
        asic = self._static("amdsmi_get_gpu_asic_info", handle) or {}
        caps = self._static("amdsmi_get_power_cap_info", handle) or {}
        gfx = self._static("amdsmi_get_clock_info", handle, smi.AmdSmiClkType.GFX) or {}
        mem = self._static("amdsmi_get_clock_info", handle, smi.AmdSmiClkType.MEM) or {}
        driver = self._static("amdsmi_get_gpu_driver_info", handle) or {}
        pcie = (self._static("amdsmi_get_pcie_info", handle) or {}).get("pcie_static", {})
        ecc_mask = _num(self._static("amdsmi_get_gpu_ecc_enabled", handle))
        limits = None
        lo, hi = _num(caps.get("min_power_cap")), _num(caps.get("max_power_cap"))
        default = _num(caps.get("default_power_cap"))
        if lo is not None and hi is not None and default is not None and hi > 0:
            limits = PowerLimits(lo / _UW_PER_W, hi / _UW_PER_W, default / _UW_PER_W)
        memory_total = _num(self._static("amdsmi_get_gpu_memory_total", handle, vram))
        info = DeviceInfo(
            device_id=f"{self.host_id}/gpu{index}",
            backend=self.name,
            kind="gpu",
            vendor="amd",
            model=str(asic.get("market_name") or "AMD GPU"),
            index=index,
            uuid=_str(self._static("amdsmi_get_gpu_device_uuid", handle)),
            memory_total_bytes=None if memory_total is None else int(memory_total),
            capabilities=Capabilities(
                power_limits=limits,
                max_clock_sm_mhz=_num(gfx.get("max_clk")),
                max_clock_mem_mhz=_num(mem.get("max_clk")),
                ecc_enabled=None if ecc_mask is None else ecc_mask != 0,
                pcie_gen=_int(pcie.get("pcie_interface_version")),
                pcie_width=_int(pcie.get("max_pcie_width")),
                driver_version=_str(driver.get("driver_version")),
                library_version=library,
                extra={"gfx_target": asic.get("target_graphics_version")},
            ),
        )
        return _Gpu(info=info, handle=handle)

    def _static(self, fn: str, *args: Any) -> Any:
        """A discovery query: anything failing -> None (discovery must not die on one field)."""
        call = getattr(self._smi, fn, None)
        if call is None:
            return None
        try:
            return call(*args)
        except Exception as e:  # vendor errors at the boundary: a missing capability
            log.debug("amdsmi: %s failed during discovery: %s", fn, e)
            return None

    # -- sampling -------------------------------------------------------------------------------
    def read(self) -> Reading:
        gpus = self._devices()
        smi = self._smi
        n = len(gpus)
        cols: dict[str, list[float | None]] = {c: [None] * n for c in COLUMNS}
        events: list[DeviceEvent] = []
        temp_type, metric_current = smi.AmdSmiTemperatureType, smi.AmdSmiTemperatureMetric.CURRENT
        hotspot = getattr(temp_type, "HOTSPOT", None) or getattr(temp_type, "JUNCTION", None)
        for i, g in enumerate(gpus):
            g.errors.clear()
            put = self._putter(cols, i)
            power = self._q(g, "power", "amdsmi_get_power_info") or {}
            average = _num(power.get("average_socket_power"))
            current = _num(power.get("current_socket_power"))
            unified = _num(power.get("socket_power"))
            put("power_w", next((p for p in (average, unified, current) if p is not None), None))
            put("power_instant_w", current)
            energy = self._q(g, "energy", "amdsmi_get_energy_count") or {}
            ticks = _num(energy.get("energy_accumulator", energy.get("power")))
            resolution_uj = _num(energy.get("counter_resolution"))
            if ticks is not None and resolution_uj is not None:
                put("energy_j", ticks * resolution_uj / 1e6)
            cap = self._q(g, "cap", "amdsmi_get_power_cap_info") or {}
            put("cap_w", _per(_num(cap.get("power_cap")), _UW_PER_W))
            temp = None
            if hotspot is not None:
                temp = self._q(g, "temp_hotspot", "amdsmi_get_temp_metric", hotspot, metric_current)
            if temp is None and "temp_hotspot" in g.unsupported:
                temp = self._q(
                    g, "temp_edge", "amdsmi_get_temp_metric", temp_type.EDGE, metric_current
                )
            put("temp_c", _num(temp))
            put(
                "mem_temp_c",
                _num(
                    self._q(
                        g, "temp_vram", "amdsmi_get_temp_metric", temp_type.VRAM, metric_current
                    )
                ),
            )
            activity = self._q(g, "activity", "amdsmi_get_gpu_activity") or {}
            put("util_compute_pct", _num(activity.get("gfx_activity")))
            put("util_mem_pct", _num(activity.get("umc_activity")))
            vram = smi.AmdSmiMemoryType.VRAM
            put("mem_used_bytes", _num(self._q(g, "vram", "amdsmi_get_gpu_memory_usage", vram)))
            put("mem_total_bytes", g.info.memory_total_bytes)
            clk = smi.AmdSmiClkType
            put("clock_sm_mhz", _clock(self._q(g, "gfx_clk", "amdsmi_get_clock_info", clk.GFX)))
            put("clock_mem_mhz", _clock(self._q(g, "mem_clk", "amdsmi_get_clock_info", clk.MEM)))
            ecc = self._q(g, "ecc", "amdsmi_get_gpu_total_ecc_count") or {}
            put("ecc_corrected_total", _num(ecc.get("correctable_count")))
            put("ecc_uncorrected_total", _num(ecc.get("uncorrectable_count")))
            fault = self._fault_event(g)
            if fault is not None:
                events.append(fault)
        return Reading(metrics=cols, events=events)

    def _q(self, g: _Gpu, key: str, fn: str, *args: Any) -> Any:
        if key in g.unsupported:
            return None
        call = getattr(self._smi, fn, None)
        if call is None:
            g.unsupported.add(key)
            return None
        try:
            return call(g.handle, *args)
        except Exception as e:  # vendor errors at the boundary
            if self._unsupported(e):
                g.unsupported.add(key)
            else:
                g.errors.append((fn, e))
            return None

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
                    "amdsmi: %s=%r outside [%g, %g]; dropped", metric, v, spec.low, spec.high
                )

        return put

    def _fault_event(self, g: _Gpu) -> DeviceEvent | None:
        if not g.errors:
            g.fault_code = None
            return None
        fn, err = g.errors[0]
        code = self._code(err)
        code = -1 if code is None else code
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

    # -- power caps -----------------------------------------------------------------------------
    def power_cap_w(self, index: int) -> float | None:
        g = self._gpu(index, BackendError)
        try:
            info = self._smi.amdsmi_get_power_cap_info(g.handle)
        except Exception as e:  # vendor errors at the boundary
            if self._unsupported(e):
                return None
            raise BackendError(f"reading the power cap of AMD GPU {index} failed: {e}") from e
        return _per(_num(info.get("power_cap")), _UW_PER_W)

    def set_power_cap_w(self, index: int, cap_w: float) -> None:
        g = self._gpu(index, ActuationError)
        if not math.isfinite(cap_w) or cap_w <= 0:
            raise ActuationError(f"power cap {cap_w!r} W for AMD GPU {index} is not positive")
        limits = g.info.capabilities.power_limits
        if limits is not None and not limits.min_w <= cap_w <= limits.max_w:
            raise ActuationError(
                f"{cap_w:g} W is outside AMD GPU {index}'s power-cap range "
                f"[{limits.min_w:g}, {limits.max_w:g}] W"
            )
        try:
            current = _num(self._smi.amdsmi_get_power_cap_info(g.handle).get("power_cap"))
        except Exception as e:  # vendor errors at the boundary
            raise self._actuation_error(index, "reading", e) from e
        if current is not None and abs(current / _UW_PER_W - cap_w) < _SET_TOLERANCE_W:
            return
        try:
            self._smi.amdsmi_set_power_cap(g.handle, 0, round(cap_w * _UW_PER_W))
        except Exception as e:  # vendor errors at the boundary
            raise self._actuation_error(index, "setting", e) from e

    def _actuation_error(self, index: int, verb: str, e: BaseException) -> ActuationError:
        if self._code(e) == self._status("NO_PERM"):
            return ActuationError(f"{verb} the power cap of AMD GPU {index} needs root ({e})")
        if self._unsupported(e):
            return ActuationError(f"AMD GPU {index} does not support power caps ({e})")
        return ActuationError(f"{verb} the power cap of AMD GPU {index} failed ({e})")

    def _gpu(self, index: int, error: type[BackendError] | type[ActuationError]) -> _Gpu:
        try:
            gpus = self._devices()
        except BackendError as e:
            raise error(str(e)) from e
        if not 0 <= index < len(gpus):
            raise error(f"no AMD GPU with index {index} (this host has {len(gpus)})")
        return gpus[index]

    # -- errors ---------------------------------------------------------------------------------
    def _status(self, which: str) -> int:
        """An AMDSMI_STATUS_* code, by the package's AmdSmiRetCode name where it has one."""
        names, default = _STATUS[which]
        codes = getattr(self._smi, "AmdSmiRetCode", None)
        for name in names:
            if hasattr(codes, name):
                return int(getattr(codes, name))
        return default

    def _code(self, e: BaseException) -> int | None:
        get = getattr(e, "get_error_code", None)
        if callable(get):
            try:
                return abs(int(get()))
            except (TypeError, ValueError):
                return None
        code = getattr(e, "err_code", None)
        return abs(int(code)) if isinstance(code, int) else None

    def _unsupported(self, e: BaseException) -> bool:
        """NOT_SUPPORTED, NOT_YET_IMPLEMENTED, NO_PERM: none change while the process runs."""
        return self._code(e) in {self._status(w) for w in ("NOT_SUPPORTED", "NOT_IMPL", "NO_PERM")}

    # -- teardown -------------------------------------------------------------------------------
    def close(self) -> None:
        self._gpus = None
        self._handles = []
        self._shutdown()
        self._availability = None

    def _shutdown(self) -> None:
        if self._initialized and self._smi is not None:
            try:
                self._smi.amdsmi_shut_down()
            except Exception as e:  # vendor errors at the boundary
                log.debug("amdsmi: shutdown failed: %s", e)
        self._initialized = False


def _num(value: Any) -> float | None:
    """A number from an AMD SMI answer; "N/A" strings and missing keys -> None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    v = _num(value)
    return None if v is None else int(v)


def _str(value: Any) -> str | None:
    if value is None or value == "N/A":
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _per(value: float | None, divisor: float) -> float | None:
    return None if value is None else value / divisor


def _clock(info: Any) -> float | None:
    if not isinstance(info, dict):
        return None
    return _num(info.get("clk", info.get("cur_clk")))


def _lib_version(version: Any) -> str | None:
    if isinstance(version, dict):
        parts = [version.get(k) for k in ("major", "minor", "release")]
        return ".".join(str(p) for p in parts if p is not None) or None
    if isinstance(version, tuple | list):
        return ".".join(str(p) for p in version)
    return _str(version)
