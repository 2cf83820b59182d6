"""Failure risk per device from documented rules over a stream of ``telemetry.samples``.

:class:`FailureRisk` turns what a driver already tells us (XIDs, ECC counters, retired pages,
remapped rows, thermal state, a device going silent) into one number per device: the risk that
it fails (needs a reset, a drain or an RMA) within the horizon, in ``[0, 1]``. It is not a
learned model: every rule below is a fact from vendor documentation or field studies, and every
weight is this project's judgement of "how likely is a failure soon, given only this", to be
revised with fleet data. Rules combine as independent evidence:
``risk = 1 - prod_r (1 - weight_r * level_r)``, with ``level_r`` in ``[0, 1]``.

======================  ========================================  ======  =====================
rule                    trigger (level)                           weight  source
======================  ========================================  ======  =====================
``xid``                 an XID event; level 1, remembered with     per     NVIDIA XID catalog
                        half-life ``horizon_s`` (weight = the      code    [xid]
                        code's, table :data:`XID_WEIGHTS`)         below
``ecc_uncorrected``     ``ecc_uncorrected_total`` increased, or    0.7     NVIDIA memory error
                        an ``ecc`` event; remembered (horizon)             management [mem]
``ecc_corrected_rate``  EWMA of corrected-ECC increments per       0.4     Schroeder et al. 2009
                        minute >= ``ecc_rate_bound_per_min``;              [dram]: corrected
                        level 0.5 at the bound, 1 at 10x                   errors predict
                                                                           uncorrected ones
``retired_pages``       ``retired_pages_total`` increased;         0.3     [mem] dynamic page
                        remembered (horizon)                               retirement
``remapped_rows``       ``remapped_rows_total`` increased;         0.3     [mem] row remapping
                        remembered (horizon)                               (A100 and newer)
``thermal``             EWMA (``thermal_alpha``) of how close      0.15    [nvml] slowdown temp;
                        ``temp_c`` is to ``temp_limit_c``: 0 at            DCGM thermal watch
                        limit - 10 degC, 1 at the limit
``throttle_hw``         EWMA of hardware slowdown reason bits:     0.25    [nvml] clocks-event
                        0x40 HW thermal = 1, 0x80 HW power                 reasons
                        brake = 0.8, 0x8 HW slowdown = 0.6,
                        0x20 SW thermal = 0.4
``silent``              device sends nothing for >=                0.6     XID 79 precursor;
                        ``silent_intervals`` samples while its             DCGM/nvidia-smi show
                        host reports; 0.5 at N, 1 at 2N;                   a lost GPU this way
                        remembered (horizon)
``fault_event``         a ``fault`` event from the collector;      0.3     this project
                        remembered (horizon)
======================  ========================================  ======  =====================

XID weights (:data:`XID_WEIGHTS`; an unknown XID weighs 0.1):

====  ====================================================================  ======
XID   meaning (NVIDIA XID catalog)                                          weight
====  ====================================================================  ======
13    Graphics Engine Exception: usually the application (bad kernel)       0.05
31    GPU memory page fault: usually the application (illegal address)     0.05
43    GPU stopped processing: the application's channel was reset          0.05
48    Double Bit ECC Error (DBE): uncorrectable memory error                0.6
63    ECC page retirement / row remapping recording event (reset pending)   0.3
64    ECC page retirement / row remapper recording *failure*                0.7
74    NVLink error (link down, CRC / replay storm)                          0.5
79    GPU has fallen off the bus: lost to the host until reset / reboot     0.9
94    Contained ECC error: one application hit, the GPU needs a reset       0.4
95    Uncontained ECC error: every application on the GPU is affected       0.8
119   GSP RPC timeout: the GPU System Processor stopped answering           0.6
120   GSP error                                                             0.6
====  ====================================================================  ======

Sources: [xid] https://docs.nvidia.com/deploy/xid-errors/ ;
[mem] https://docs.nvidia.com/deploy/a100-gpu-mem-error-mgmt/ ;
[nvml] NVML API reference, ``nvmlClocksEventReasons`` (``nvmlClocksThrottleReasons``) and
``NVML_TEMPERATURE_THRESHOLD_SLOWDOWN`` ; [dram] B. Schroeder, E. Pinheiro, W.-D. Weber, "DRAM
errors in the wild: a large-scale field study", SIGMETRICS 2009 ; DCGM health watches
(``DCGM_HEALTH_WATCH_MEM``, ``_THERMAL``, ``_NVLINK``).

Learned model. Next to the rules, :class:`FailureRisk` keeps streaming features per device
(:mod:`~accelpilot.detectors.failure_features`: EW windows of ECC rates and their slope,
retired-page / row-remap and XID counts, temperature level, slope and distance to host peers,
throttle-reason fractions, gaps) and scores them with the shipped logistic model
(:mod:`~accelpilot.detectors.failure_model`, trained on simulated fault traces by
:mod:`~accelpilot.detectors.failure_train`; measured in docs/detectors.md, "Learned failure
model"). With the model the device's risk is ``max(known-fatal rules, model)``:

- the *known-fatal* rules (``xid``, ``ecc_uncorrected``, ``retired_pages``, ``remapped_rows``,
  ``silent``, ``fault_event``) combine as above and still fire at once with their documented
  weights: the training traces never show these signals before a failure, so the model has
  nothing to say about them;
- the *trend* rules (``ecc_corrected_rate``, ``thermal``, ``throttle_hw``,
  :data:`MODEL_SUPERSEDES`) are replaced by the model, which was trained on exactly those
  signals and tells a recurring pattern that precedes a failure from an isolated, benign
  episode (on their own these rules cannot reach the 0.5 alert threshold; together, on one
  benign storm with a throttle, they did: the false alarms the model removes). They still show
  in the evidence.

The model's probability counts only above its ``floor`` (so a healthy device's risk stays 0)
and shows in the evidence as ``("model", p)``. ``FailureRisk(..., model=None)`` is the rules
alone, all of them.

Time is *logical*: each sample advances its devices by ``interval_s`` times the number of
intervals since the previous sample (at least one), so a replay at any speed gives the same
risks. Counters that go down (driver reload) rebase without counting. Strictly streaming:
``update`` sees one sample and keeps O(devices x rules) state, checkpointed with msgspec.

>>> from accelpilot.schemas.samples import DeviceEvent, HostSample
>>> fr = FailureRisk(["h/gpu0", "h/gpu1"])
>>> s = HostSample(host_id="h", ts_ns=0, seq=0, interval_s=1.0, device_ids=["h/gpu0", "h/gpu1"],
...     device_kinds=["gpu", "gpu"], metrics={"temp_c": [60.0, 61.0]},
...     events=[DeviceEvent(device_id="h/gpu1", kind="xid", code=79, ts_ns=0)])
>>> risk, evidence = fr.update(s)
>>> risk.round(2).tolist(), evidence[1]
([0.0, 0.9], [('xid', 79.0)])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import msgspec
import numpy as np

from accelpilot.detectors.base import BoolArray, FloatArray
from accelpilot.detectors.failure_features import FailureFeatures
from accelpilot.detectors.failure_model import FailureModel, shipped
from accelpilot.errors import ConfigError
from accelpilot.schemas.samples import DeviceEvent, HostSample

#: XID code -> weight (see the module docstring for each code's meaning).
XID_WEIGHTS: dict[int, float] = {
    13: 0.05,
    31: 0.05,
    43: 0.05,
    48: 0.6,
    63: 0.3,
    64: 0.7,
    74: 0.5,
    79: 0.9,
    94: 0.4,
    95: 0.8,
    119: 0.6,
    120: 0.6,
}
XID_UNKNOWN_WEIGHT = 0.1
#: XIDs caused by the application, not the device (low risk; alert as info).
XID_APP_LEVEL = frozenset({13, 31, 43})

XID_MEANING: dict[int, str] = {
    13: "graphics engine exception (application)",
    31: "GPU memory page fault (application)",
    43: "GPU stopped processing (application)",
    48: "double-bit ECC error",
    63: "ECC page retirement / row remap event",
    64: "ECC page retirement / row remap failure",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
}

# NVML clocks-event (throttle) reason bits.
THROTTLE_HW_SLOWDOWN = 0x8
THROTTLE_SW_THERMAL = 0x20
THROTTLE_HW_THERMAL = 0x40
THROTTLE_HW_POWER_BRAKE = 0x80
#: Bit -> level of the ``throttle_hw`` rule.
THROTTLE_LEVELS: dict[int, float] = {
    THROTTLE_HW_THERMAL: 1.0,
    THROTTLE_HW_POWER_BRAKE: 0.8,
    THROTTLE_HW_SLOWDOWN: 0.6,
    THROTTLE_SW_THERMAL: 0.4,
}

RULES: tuple[str, ...] = (
    "xid",
    "ecc_uncorrected",
    "ecc_corrected_rate",
    "retired_pages",
    "remapped_rows",
    "thermal",
    "throttle_hw",
    "silent",
    "fault_event",
)
_R = {name: i for i, name in enumerate(RULES)}
#: Rule weights (``xid`` is 1 here: its weight is the code's, folded into its level).
WEIGHTS: dict[str, float] = {
    "xid": 1.0,
    "ecc_uncorrected": 0.7,
    "ecc_corrected_rate": 0.4,
    "retired_pages": 0.3,
    "remapped_rows": 0.3,
    "thermal": 0.15,
    "throttle_hw": 0.25,
    "silent": 0.6,
    "fault_event": 0.3,
}
#: Rules remembered with half-life ``horizon_s``; the others are recomputed every sample.
_REMEMBERED = np.array(
    [
        r in {"xid", "ecc_uncorrected", "retired_pages", "remapped_rows", "silent", "fault_event"}
        for r in RULES
    ]
)
_REMEMBERED_IDX = np.flatnonzero(_REMEMBERED)
#: Trend rules whose signals the learned model was trained on: with the model, it replaces them.
MODEL_SUPERSEDES: tuple[str, ...] = ("ecc_corrected_rate", "thermal", "throttle_hw")
_FATAL = np.array([r not in MODEL_SUPERSEDES for r in RULES])
_COUNTERS = ("ecc_corrected_total", "ecc_uncorrected_total", "retired_pages_total",
             "remapped_rows_total")  # fmt: skip


class EventArrays(NamedTuple):
    """A sample's events as arrays over rows (see :func:`parse_events`)."""

    xid_code: np.ndarray  # most severe XID of the tick (0 = none)
    xid_level: FloatArray  # its weight
    ecc: FloatArray  # ``ecc`` events (counted as uncorrected errors)
    throttle: np.ndarray  # reason bits from ``throttle`` events
    fault: FloatArray  # largest ``fault`` event code


def parse_events(events: Sequence[DeviceEvent], pos: dict[str, int], n: int) -> EventArrays:
    """Events onto ``n`` rows (``pos``: device id -> row); unknown devices are ignored."""
    out = EventArrays(
        np.zeros(n, np.int64), np.zeros(n), np.zeros(n), np.zeros(n, np.int64), np.zeros(n)
    )
    for e in events:
        i = pos.get(e.device_id)
        if i is None:
            continue
        if e.kind == "xid":
            w = XID_WEIGHTS.get(e.code, XID_UNKNOWN_WEIGHT)
            if w >= out.xid_level[i]:
                out.xid_level[i], out.xid_code[i] = w, e.code
        elif e.kind == "ecc":
            out.ecc[i] += 1.0
        elif e.kind == "throttle":
            out.throttle[i] |= e.code
        else:
            out.fault[i] = max(out.fault[i], float(e.code))
    return out


class _HostState(msgspec.Struct, frozen=True):
    devices: list[str]
    last_ts_ns: int | None
    arrays: dict[str, list[Any]]


class _State(msgspec.Struct, kw_only=True):
    v: int = 2
    device_ids: list[str]
    host_ids: list[str]
    level: list[list[float]]
    value: list[list[float]]
    last_counter: list[list[float]]
    ecc_rate: list[float]
    thermal: list[float]
    throttle: list[float]
    silent: list[int]
    last_ts_ns: dict[str, int]
    params: dict[str, float]
    #: v2: the learned model (its JSON document; None = rules only), its features and risks.
    model: dict[str, Any] | None = None
    features: bytes | None = None
    model_risk: list[float] | None = None


#: ``FailureRisk(model=...)`` default: the model shipped in ``detectors/weights``.
SHIPPED_MODEL = "shipped"


class FailureRisk:
    """Rule-based failure risk for a fixed, growable list of devices.

    Args:
        device_ids: the devices scored, in the order of the returned arrays.
        horizon_s: risk horizon; remembered events decay with this half-life.
        ecc_rate_bound_per_min: corrected-ECC rate (EWMA) that starts to count.
        ecc_alpha: EWMA weight per sample of the corrected-ECC rate.
        temp_limit_c: slowdown temperature (``thermal`` is 1 at it).
        thermal_alpha: EWMA weight per sample of the thermal and throttle history.
        silent_intervals: samples of silence (host reporting) before ``silent`` counts.
        model: the learned model combined with the rules (``max``): ``"shipped"`` (default),
            a :class:`~accelpilot.detectors.failure_model.FailureModel`, or None (rules only).
    """

    def __init__(
        self,
        device_ids: Sequence[str],
        *,
        horizon_s: float = 3600.0,
        ecc_rate_bound_per_min: float = 10.0,
        ecc_alpha: float = 0.2,
        temp_limit_c: float = 90.0,
        thermal_alpha: float = 0.05,
        silent_intervals: int = 3,
        model: FailureModel | str | None = SHIPPED_MODEL,
    ) -> None:
        self.horizon_s = float(horizon_s)
        self.ecc_rate_bound_per_min = float(ecc_rate_bound_per_min)
        self.ecc_alpha = float(ecc_alpha)
        self.temp_limit_c = float(temp_limit_c)
        self.thermal_alpha = float(thermal_alpha)
        self.silent_intervals = int(silent_intervals)
        if isinstance(model, str):
            if model != SHIPPED_MODEL:
                raise ConfigError(
                    f"FailureRisk(model={model!r}): use {SHIPPED_MODEL!r}, a FailureModel "
                    "(FailureModel.load(path)) or None for the rules alone"
                )
            model = shipped()
        self.model: FailureModel | None = model
        self.features = FailureFeatures(0, temp_limit_c=self.temp_limit_c)
        self.model_risk = np.zeros(0)
        self._host_code = np.zeros(0, np.int64)
        self._host_codes: dict[str, int] = {}
        self.weights = np.array([WEIGHTS[r] for r in RULES])
        self.device_ids: list[str] = []
        self.index: dict[str, int] = {}
        self.host_ids: list[str] = []
        n_r = len(RULES)
        self.level = np.zeros((0, n_r))
        self.value = np.zeros((0, n_r))
        self.last_counter = np.zeros((0, len(_COUNTERS)))
        self.ecc_rate = np.zeros(0)  # corrected ECC per minute, EWMA
        self.thermal = np.zeros(0)
        self.throttle = np.zeros(0)
        self.silent = np.zeros(0, np.int64)  # consecutive silent samples of the host
        self.last_ts_ns: dict[str, int] = {}
        #: Per-host cache: tuple(sample.device_ids) -> row indices.
        self._rows: dict[tuple[str, ...], np.ndarray] = {}
        self._host_rows: dict[str, np.ndarray] = {}
        # Per device, last sample's measures (what the alert engine reads).
        self.new_uncorrected = np.zeros(0)
        self.xid_code = np.zeros(0, np.int64)
        self.add_devices(device_ids)

    # -- devices -----------------------------------------------------------------------------

    def add_devices(self, device_ids: Sequence[str], host_id: str = "") -> None:
        """Append devices not yet known (existing rows keep their order)."""
        self.add_hosts([(host_id, device_ids)])

    def add_hosts(self, hosts: Iterable[tuple[str, Sequence[str]]]) -> None:
        """:meth:`add_devices` for several ``(host_id, device_ids)`` at once, in that order:
        one append of every array (a call per host made a fleet's first tick, or restoring a
        checkpoint, quadratic in its devices: 12 s of CPU at 8,000 hosts x 8)."""
        codes: list[int] = []
        for host_id, device_ids in hosts:
            new = [d for d in dict.fromkeys(device_ids) if d not in self.index]
            if not new:
                continue
            codes += [self._code(host_id)] * len(new)
            for d in new:
                self.index[d] = len(self.device_ids)
                self.device_ids.append(d)
                self.host_ids.append(host_id)
        k = len(codes)
        if not k:
            return
        self._host_code = np.concatenate([self._host_code, np.array(codes, np.int64)])
        self.features.add_rows(k)
        self.model_risk = np.concatenate([self.model_risk, np.zeros(k)])
        n_r = len(RULES)
        self.level = np.concatenate([self.level, np.zeros((k, n_r))])
        self.value = np.concatenate([self.value, np.zeros((k, n_r))])
        self.last_counter = np.concatenate(
            [self.last_counter, np.full((k, len(_COUNTERS)), np.nan)]
        )
        self.ecc_rate = np.concatenate([self.ecc_rate, np.zeros(k)])
        self.thermal = np.concatenate([self.thermal, np.zeros(k)])
        self.throttle = np.concatenate([self.throttle, np.zeros(k)])
        self.silent = np.concatenate([self.silent, np.zeros(k, np.int64)])
        self.new_uncorrected = np.concatenate([self.new_uncorrected, np.zeros(k)])
        self.xid_code = np.concatenate([self.xid_code, np.zeros(k, np.int64)])
        self._rows.clear()
        self._host_rows.clear()

    def _code(self, host_id: str) -> int:
        return self._host_codes.setdefault(host_id, len(self._host_codes))

    def _set_host(self, row: int, host_id: str) -> None:
        self.host_ids[row] = host_id
        self._host_code[row] = self._code(host_id)

    def _rows_for(self, sample: HostSample) -> tuple[np.ndarray, np.ndarray]:
        """(rows of the sample's devices, rows of every known device of the host)."""
        key = tuple(sample.device_ids)
        rows = self._rows.get(key)
        if rows is None:
            self.add_devices(sample.device_ids, sample.host_id)
            rows = np.array([self.index[d] for d in key], np.int64)
            for r in rows.tolist():
                if not self.host_ids[r]:
                    self._set_host(r, sample.host_id)
            self._rows[key] = rows
            self._host_rows.pop(sample.host_id, None)
        host_rows = self._host_rows.get(sample.host_id)
        if host_rows is None:
            host_rows = np.array(
                [i for i, h in enumerate(self.host_ids) if h == sample.host_id], np.int64
            )
            self._host_rows[sample.host_id] = host_rows
        return rows, host_rows

    # -- scoring -----------------------------------------------------------------------------

    def update(self, sample: HostSample) -> tuple[FloatArray, list[list[tuple[str, float]]]]:
        """Learn one sample; return risk per device (all devices) and each one's evidence.

        Evidence lists ``(rule, value)`` for every rule with a non-zero level; ``value`` is the
        rule's measure (XID code, ECC per minute, temperature, reason bits, silent samples,
        counter increase).
        """
        self.update_arrays(sample)
        return self.risk(), self.evidence()

    def update_arrays(self, sample: HostSample) -> BoolArray:
        """Learn one sample (no evidence lists); return which of the sample's devices reported."""
        rows, host_rows = self._rows_for(sample)
        n = len(host_rows)
        where = {r: i for i, r in enumerate(host_rows.tolist())}
        pos = np.array([where[r] for r in rows.tolist()], np.int64)
        cols: dict[str, FloatArray] = {}
        for name in (*_COUNTERS, "temp_c", "throttle_reasons_mask"):
            c = sample.metrics.get(name)
            if c is not None:
                col = cols[name] = np.full(n, np.nan)
                col[pos] = np.array(c, dtype=np.float64)
        reporting = np.zeros(n, bool)
        for c in sample.metrics.values():
            reporting[pos] |= np.array([v is not None for v in c])
        events = parse_events(
            sample.events, {d: int(pos[i]) for i, d in enumerate(sample.device_ids)}, n
        )
        n_int = np.full(n, self.intervals(sample.host_id, sample.ts_ns, sample.interval_s))
        self.update_rows(host_rows, cols, reporting, events, n_int, np.full(n, sample.interval_s))
        return reporting[pos]

    def intervals(self, host_id: str, ts_ns: int, interval_s: float) -> int:
        """Whole intervals since the host's previous sample (at least 1); records ``ts_ns``."""
        last = self.last_ts_ns.get(host_id)
        self.last_ts_ns[host_id] = ts_ns
        if last is None or interval_s <= 0:
            return 1
        return max(1, round((ts_ns - last) / (interval_s * 1e9)))

    def rows_of(self, host_id: str, device_ids: Sequence[str]) -> np.ndarray:
        """Row of each device (added, with its host, if new)."""
        self.add_devices(device_ids, host_id)
        for d in device_ids:
            r = self.index[d]
            if not self.host_ids[r]:
                self._set_host(r, host_id)
        return np.array([self.index[d] for d in device_ids], np.int64)

    def update_rows(
        self,
        rows: np.ndarray,
        cols: dict[str, FloatArray],
        reporting: BoolArray,
        events: EventArrays,
        n_int: np.ndarray,
        interval_s: FloatArray,
    ) -> None:
        """The columnar core: ``rows`` are *every* known device of the hosts sampled (a device
        that sent nothing has ``reporting`` False); ``cols`` maps metric names to values per
        row (NaN = absent); ``n_int`` whole intervals of ``interval_s`` since each row's host
        last reported (logical time)."""
        n = len(rows)
        dt_s = n_int * interval_s
        nan = np.full(n, np.nan)
        level = self.level
        value = self.value
        # Remembered rules decay.
        decay = (0.5 ** (dt_s / self.horizon_s))[:, None]
        level[rows[:, None], _REMEMBERED_IDX] *= decay

        # Counters: increase since the previous reading (a decrease rebases).
        cur = np.stack([cols.get(c, nan) for c in _COUNTERS], axis=1)
        prev = self.last_counter[rows]
        delta = np.where(np.isnan(cur) | np.isnan(prev), 0.0, np.maximum(cur - prev, 0.0))
        self.last_counter[rows] = np.where(np.isnan(cur), prev, cur)
        ecc_corr, ecc_unc, pages, remaps = delta.T

        # Corrected-ECC rate (per minute, EWMA over samples that carry the counter).
        has_ecc = ~np.isnan(cur[:, 0]) & ~np.isnan(prev[:, 0])
        per_min = ecc_corr * 60.0 / np.maximum(dt_s, 1e-9)
        rate = self.ecc_rate[rows]
        rate = np.where(has_ecc, rate + self.ecc_alpha * (per_min - rate), rate)
        self.ecc_rate[rows] = rate
        bound = self.ecc_rate_bound_per_min
        rate_level = np.where(
            rate >= bound, np.clip(0.5 + 0.5 * np.log10(np.maximum(rate, bound) / bound), 0, 1), 0
        )
        self._set(rows, "ecc_corrected_rate", rate_level, rate)

        unc = ecc_unc + events.ecc
        self.new_uncorrected[rows] = unc
        self._remember(rows, "ecc_uncorrected", (unc > 0).astype(float), unc)
        self._remember(rows, "retired_pages", np.minimum(pages, 1.0), pages)
        self._remember(rows, "remapped_rows", np.minimum(remaps, 1.0), remaps)

        # Thermal history.
        temp = cols.get("temp_c", nan)
        near = np.clip((temp - (self.temp_limit_c - 10.0)) / 10.0, 0.0, 1.0)
        th = self.thermal[rows]
        th = np.where(np.isnan(near), th, th + self.thermal_alpha * (near - th))
        self.thermal[rows] = th
        self._set(rows, "thermal", th, np.where(np.isnan(temp), value[rows, _R["thermal"]], temp))

        mask = np.nan_to_num(cols.get("throttle_reasons_mask", nan)).astype(np.int64)
        mask |= events.throttle
        thr_now = np.zeros(n)
        for bit, lv in THROTTLE_LEVELS.items():
            thr_now = np.maximum(thr_now, np.where(mask & bit, lv, 0.0))
        tr = self.throttle[rows]
        tr = np.where(reporting, tr + self.thermal_alpha * (thr_now - tr), tr)
        self.throttle[rows] = tr
        self._set(rows, "throttle_hw", tr, mask.astype(float))

        self.xid_code[rows] = events.xid_code
        self._remember(rows, "xid", events.xid_level, events.xid_code.astype(float))
        self._remember(rows, "fault_event", (events.fault > 0).astype(float), events.fault)

        # Silence while the host reports.
        sil = np.where(reporting, 0, self.silent[rows] + n_int).astype(np.int64)
        self.silent[rows] = sil
        n_s = self.silent_intervals
        sil_level = np.where(sil >= n_s, np.minimum(sil / (2.0 * n_s), 1.0), 0.0)
        self._remember(rows, "silent", sil_level, sil.astype(float))

        # Learned model: features over the same readings, then its risk.
        xid_count = events.xid_code > 0
        for app_code in XID_APP_LEVEL:  # application-level XIDs are not device wear
            xid_count &= events.xid_code != app_code
        self.features.update_rows(
            rows,
            self._host_code[rows],
            reporting,
            temp,
            mask,
            np.stack([ecc_corr, unc, pages, remaps], axis=1),
            events.xid_level,
            xid_count.astype(float),
            n_int,
            dt_s,
        )
        if self.model is not None:
            self.model_risk[rows] = self.model.risk(self.features.features(rows))

    def _set(self, rows: np.ndarray, rule: str, level: FloatArray, value: FloatArray) -> None:
        j = _R[rule]
        self.level[rows, j] = level
        self.value[rows, j] = value

    def _remember(self, rows: np.ndarray, rule: str, level: FloatArray, value: FloatArray) -> None:
        j = _R[rule]
        old = self.level[rows, j]
        hit = level >= old
        self.level[rows, j] = np.where(hit, level, old)
        self.value[rows, j] = np.where(hit & (level > 0), value, self.value[rows, j])

    def risk(self, rows: np.ndarray | None = None) -> FloatArray:
        """Current risk per device, ``(n_devices,)`` in ``[0, 1]`` (of ``rows`` only, when
        given): the rules alone, or ``max(known-fatal rules, model)`` (see the module
        docstring)."""
        if self.model is None:
            return self.rules_risk(rows)
        model = self.model_risk if rows is None else self.model_risk[rows]
        return np.maximum(self.rules_risk(rows, fatal_only=True), model)

    def rules_risk(self, rows: np.ndarray | None = None, *, fatal_only: bool = False) -> FloatArray:
        """The rules' risk (independent evidence) of every device or of ``rows``;
        ``fatal_only``: without :data:`MODEL_SUPERSEDES`."""
        lv = np.clip(self.level if rows is None else self.level[rows], 0.0, 1.0)
        w = self.weights * _FATAL if fatal_only else self.weights
        return 1.0 - np.prod(1.0 - w * lv, axis=1)

    def evidence(self, rows: Sequence[int] | None = None, floor: float = 1e-3) -> list:
        """``[(rule, value), ...]`` per device (or per ``rows``) for rules above ``floor``."""
        idx = range(len(self.device_ids)) if rows is None else rows
        out: list[list[tuple[str, float]]] = [[] for _ in idx]
        sub = self.level if rows is None else self.level[np.asarray(rows, np.int64)]
        for i, j in np.argwhere(sub > floor).tolist():
            r = i if rows is None else rows[i]
            out[i].append((RULES[j], float(self.value[r, j])))
        if self.model is not None:
            m = self.model_risk if rows is None else self.model_risk[np.asarray(rows, np.int64)]
            for i in np.flatnonzero(m > floor).tolist():
                out[i].append(("model", round(float(m[i]), 3)))
        return out

    # -- state -------------------------------------------------------------------------------

    #: Per-device arrays (one row per device), what a host's checkpoint carries.
    _ROW_ARRAYS = ("level", "value", "last_counter", "ecc_rate", "thermal", "throttle", "silent",
                   "new_uncorrected", "xid_code", "model_risk")  # fmt: skip

    def host_state(self, host_id: str, device_ids: Sequence[str]) -> bytes:
        """One host's devices ``device_ids`` (their rule levels, counters, EWMAs, feature
        windows) and its last sample time: what the host's next owner needs to score it as this
        one would (streams/host_state.py). :meth:`restore_host` puts it back."""
        rows = [r for d in device_ids if (r := self.index.get(d)) is not None]
        arrays = {name: getattr(self, name)[rows].tolist() for name in self._ROW_ARRAYS}
        arrays["features"] = self.features.state[rows].tolist()
        return msgspec.msgpack.encode(
            _HostState(
                devices=[self.device_ids[i] for i in rows],
                last_ts_ns=self.last_ts_ns.get(host_id),
                arrays=arrays,
            )
        )

    def restore_host(self, host_id: str, state: bytes) -> None:
        self.restore_hosts([(host_id, state)])

    def restore_hosts(self, states: Sequence[tuple[str, bytes]]) -> None:
        """:meth:`restore_host` for several hosts: their new devices appended at once (one at
        a time, restoring a rebalance's hosts was quadratic: 7.7 s at 8,000 hosts x 8)."""
        decoded = [(h, msgspec.msgpack.decode(st, type=_HostState)) for h, st in states]
        decoded = [(h, s) for h, s in decoded if s.devices]
        self.add_hosts((h, s.devices) for h, s in decoded)
        for host_id, s in decoded:
            rows = self.rows_of(host_id, s.devices)
            for name in self._ROW_ARRAYS:
                target = getattr(self, name)
                target[rows] = np.asarray(s.arrays[name], dtype=target.dtype)
            feats = self.features.state
            feats[rows] = np.asarray(s.arrays["features"], dtype=feats.dtype)
            if s.last_ts_ns is not None:
                self.last_ts_ns[host_id] = s.last_ts_ns

    def get_state(self) -> bytes:
        """A msgspec (msgpack) checkpoint; :meth:`from_state` rebuilds an identical scorer."""
        return msgspec.msgpack.encode(
            _State(
                device_ids=self.device_ids,
                host_ids=self.host_ids,
                level=self.level.tolist(),
                value=self.value.tolist(),
                last_counter=self.last_counter.tolist(),
                ecc_rate=self.ecc_rate.tolist(),
                thermal=self.thermal.tolist(),
                throttle=self.throttle.tolist(),
                silent=self.silent.tolist(),
                last_ts_ns=self.last_ts_ns,
                params={
                    "horizon_s": self.horizon_s,
                    "ecc_rate_bound_per_min": self.ecc_rate_bound_per_min,
                    "ecc_alpha": self.ecc_alpha,
                    "temp_limit_c": self.temp_limit_c,
                    "thermal_alpha": self.thermal_alpha,
                    "silent_intervals": self.silent_intervals,
                },
                # The model's numbers without its training record (kept small).
                model=None if self.model is None else {**self.model.to_dict(), "record": {}},
                features=self.features.get_state(),
                model_risk=self.model_risk.tolist(),
            )
        )

    @classmethod
    def from_state(cls, state: bytes) -> FailureRisk:
        s = msgspec.msgpack.decode(state, type=_State)
        p = s.params
        obj = cls(
            [],
            horizon_s=p["horizon_s"],
            ecc_rate_bound_per_min=p["ecc_rate_bound_per_min"],
            ecc_alpha=p["ecc_alpha"],
            temp_limit_c=p["temp_limit_c"],
            thermal_alpha=p["thermal_alpha"],
            silent_intervals=int(p["silent_intervals"]),
            # A v1 checkpoint predates the model: it gets the shipped one.
            model=SHIPPED_MODEL
            if s.v < 2
            else (None if s.model is None else FailureModel.from_dict(s.model, "checkpoint")),
        )
        obj.add_hosts((h, [d]) for d, h in zip(s.device_ids, s.host_ids, strict=True))
        n_r, n_c = len(RULES), len(_COUNTERS)
        n = len(s.device_ids)
        obj.level = np.array(s.level, dtype=np.float64).reshape(n, n_r)
        obj.value = np.array(s.value, dtype=np.float64).reshape(n, n_r)
        obj.last_counter = np.array(s.last_counter, dtype=np.float64).reshape(n, n_c)
        obj.ecc_rate = np.array(s.ecc_rate, dtype=np.float64)
        obj.thermal = np.array(s.thermal, dtype=np.float64)
        obj.throttle = np.array(s.throttle, dtype=np.float64)
        obj.silent = np.array(s.silent, dtype=np.int64)
        obj.last_ts_ns = dict(s.last_ts_ns)
        if s.features is not None:  # a v1 checkpoint starts its features afresh
            obj.features = FailureFeatures.from_state(s.features)
        if s.model_risk is not None:
            obj.model_risk = np.array(s.model_risk, dtype=np.float64)
        return obj
