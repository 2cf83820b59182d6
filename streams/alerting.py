"""From per-device signals to ``fleet.alerts`` and ``telemetry.anomalies`` payloads.

:class:`AlertEngine` receives, once per host sample, arrays of signals for that host's devices
(temperature, throttle reasons, whether each device reported, the tick's most severe XID, the
corrected-ECC rate, failure risk, detector scores) and runs one *channel* per alert kind:

=================  =========================================  ==========  ===========  =========
kind               fires when (``on``) / resolves when        k_on/k_off  severity     metric
                   (``off``)
=================  =========================================  ==========  ===========  =========
``thermal``        temp_c >= 85 degC or throttle bit 0x40     2 / 5       critical at  temp_c
                   (HW thermal slowdown) or 0x20 (SW                      >= 90 degC
                   thermal) / temp_c < 80 degC, no bit                    or 0x40
``hw_slowdown``    throttle bit 0x80 (HW power brake) or 0x8  2 / 5       warning      throttle_
                   (HW slowdown) / neither                                             reasons_mask
``device_silent``  nothing from the device while its host     3 / 1       critical     -
                   reports / it reports again
``xid``            an XID event / no XID for 60 samples       1 / 60      by code      -
``ecc``            corrected ECC >= 10 /min (EWMA) or any     2 / 10      critical if  ecc_*
                   uncorrected / < 5 /min, none uncorrected               uncorrected
``power_noise``    EW mean of abs(power change) / power       5 / 10      warning      power_w
                   >= 0.15 and >= 4x the host's median /
                   < 0.06
``failure_risk``   risk >= 0.5 / risk < 0.3                   2 / 10      critical at  -
                                                                          >= 0.8
``anomaly``        a detector's score, smoothed (EWMA 0.3),   3 / 10      warning      detector's
                   >= 0.6 / < 0.3                                                      metric
=================  =========================================  ==========  ===========  =========

Hysteresis: a channel fires once its condition held for ``k_on`` consecutive samples and
resolves once the ``off`` condition held for ``k_off`` consecutive samples; in between it keeps
its state, so a signal oscillating around ``on`` never flaps. An episode starts at the first
sample of the run that fired it; its alert id is a hash of (kind, metric, host, device, that
start ``ts_ns``), so a replay of the same samples emits byte-identical alerts and a duplicate
delivery collapses downstream. A firing alert is re-emitted with the same id when its severity
rises; the episode ends with one ``resolved`` alert (same id). Durations in reasons count
samples x ``interval_s`` (logical time), not wall clock.

:class:`DeviceMonitor` wires detectors, :class:`~accelpilot.detectors.failure_rules.FailureRisk`
and the engine over one stream of ``HostSample`` s; the stream worker and the embedded demo call
:meth:`DeviceMonitor.observe` (or :meth:`DeviceMonitor.observe_batch` for a tick of many hosts:
one detector call per batch instead of one per host).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from accelpilot.detectors.base import BatchDetector, BoolArray, FloatArray, IntArray
from accelpilot.detectors.failure_rules import (
    THROTTLE_HW_POWER_BRAKE,
    THROTTLE_HW_SLOWDOWN,
    THROTTLE_HW_THERMAL,
    THROTTLE_SW_THERMAL,
    XID_APP_LEVEL,
    XID_MEANING,
    XID_UNKNOWN_WEIGHT,
    XID_WEIGHTS,
    FailureRisk,
    parse_events,
)
from accelpilot.detectors.registry import make_detector
from accelpilot.schemas.alerts import Alert, Severity
from accelpilot.schemas.anomalies import AnomalyScore
from accelpilot.schemas.samples import HostSample

log = logging.getLogger(__name__)

SEVERITIES: tuple[Severity, ...] = ("info", "warning", "critical")
_THROTTLE_NAMES = {
    THROTTLE_HW_THERMAL: "HW thermal slowdown",
    THROTTLE_SW_THERMAL: "SW thermal slowdown",
    THROTTLE_HW_POWER_BRAKE: "HW power brake",
    THROTTLE_HW_SLOWDOWN: "HW slowdown",
}


def throttle_text(mask: int) -> str:
    """Names of the hardware/thermal reason bits set in ``mask`` ("" if none).

    >>> throttle_text(0x44)
    'HW thermal slowdown'
    """
    return ", ".join(name for bit, name in _THROTTLE_NAMES.items() if mask & bit)


def stable_id(*parts: object) -> str:
    """Deterministic id: the first 32 hex digits of sha256 over the parts joined by ``|``.

    >>> stable_id("thermal", "", "node1", "node1/gpu3", 12) == stable_id(
    ...     "thermal", "", "node1", "node1/gpu3", 12)
    True
    """
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:32]


def xid_severity(code: int) -> int:
    """0 info (application-level XIDs), 1 warning, 2 critical (weight >= 0.5)."""
    if code in XID_APP_LEVEL:
        return 0
    w = XID_WEIGHTS.get(code, XID_UNKNOWN_WEIGHT)
    return 2 if w >= 0.5 else 1


@dataclass(frozen=True, slots=True)
class Hyst:
    """Hysteresis of one channel: fire after ``k_on`` samples on, resolve after ``k_off`` off."""

    k_on: int
    k_off: int


@dataclass(frozen=True, slots=True)
class AlertConfig:
    """Thresholds and hysteresis of every channel (see the module docstring's table)."""

    temp_warn_c: float = 85.0
    temp_crit_c: float = 90.0
    temp_clear_c: float = 80.0
    thermal: Hyst = Hyst(2, 5)
    hw_slowdown: Hyst = Hyst(2, 5)
    silent: Hyst = Hyst(3, 1)
    xid: Hyst = Hyst(1, 60)
    ecc_warn_per_min: float = 10.0
    ecc_clear_per_min: float = 5.0
    ecc: Hyst = Hyst(2, 10)
    power_noise_on: float = 0.15
    power_noise_off: float = 0.06
    power_noise_peer_ratio: float = 4.0
    power_noise_alpha: float = 0.2
    power_noise: Hyst = Hyst(5, 10)
    risk_on: float = 0.5
    risk_off: float = 0.3
    risk_crit: float = 0.8
    failure_risk: Hyst = Hyst(2, 10)
    anomaly_on: float = 0.6
    anomaly_off: float = 0.3
    anomaly_alpha: float = 0.3
    anomaly: Hyst = Hyst(3, 10)
    #: AnomalyScore payloads are emitted for raw scores at or above this.
    anomaly_floor: float = 0.5


@dataclass(slots=True)
class DeviceSignals:
    """Signals of one tick, one row per device (rows may span several hosts).

    ``reporting`` False means the device sent nothing while its host reported.
    """

    device_ids: Sequence[str]
    host_ids: Sequence[str]
    ts_ns: IntArray
    interval_s: FloatArray
    reporting: BoolArray
    temp_c: FloatArray
    throttle_mask: IntArray
    xid_code: IntArray
    ecc_corrected_per_min: FloatArray
    ecc_uncorrected_new: FloatArray
    power_noise: FloatArray | None = None
    risk: FloatArray | None = None
    #: (detector, metric) -> scores.
    scores: dict[tuple[str, str], FloatArray] = field(default_factory=dict)
    #: Failure-risk evidence per row (only read where a risk alert fires); a callable
    #: ``row -> [(rule, value), ...]``.
    risk_evidence: Any = None

    @classmethod
    def for_host(cls, host_id: str, device_ids: Sequence[str], ts_ns: int, interval_s: float,
                 **arrays: Any) -> DeviceSignals:  # fmt: skip
        """Signals of one host sample (scalars broadcast over its devices)."""
        n = len(device_ids)
        return cls(
            device_ids=list(device_ids),
            host_ids=[host_id] * n,
            ts_ns=np.full(n, ts_ns, np.int64),
            interval_s=np.full(n, interval_s),
            **arrays,
        )


class _ChannelState(msgspec.Struct, kw_only=True):
    """One device's state in one channel (checkpoint form)."""

    on: int = 0
    off: int = 0
    firing: bool = False
    severity: int = 0
    run_start_ts_ns: int = 0
    start_ts_ns: int = 0
    ticks: int = 0
    aux: float = 0.0


class _EngineState(msgspec.Struct, kw_only=True):
    v: int = 1
    #: device id -> channel name -> state.
    devices: dict[str, dict[str, _ChannelState]]
    hosts: dict[str, str]


_FIELDS = ("on", "off", "firing", "severity", "run_start_ts_ns", "start_ts_ns", "ticks", "aux")
_DTYPES = {
    "on": np.int64,
    "off": np.int64,
    "firing": bool,
    "severity": np.int64,
    "run_start_ts_ns": np.int64,
    "start_ts_ns": np.int64,
    "ticks": np.int64,
    "aux": np.float64,
}
BASE_CHANNELS = (
    "thermal",
    "hw_slowdown",
    "device_silent",
    "xid",
    "ecc",
    "power_noise",
    "failure_risk",
)


class AlertEngine:
    """Hysteresis, severity, de-duplication and reasons for every alert channel.

    State is a ``(device slots, channels)`` matrix per field, stepped for all devices and
    channels at once; checkpoints are keyed by device id (:meth:`get_state`, msgspec msgpack).
    """

    def __init__(self, config: AlertConfig | None = None) -> None:
        self.config = config or AlertConfig()
        cfg = self.config
        self.slots: dict[str, int] = {}
        self.hosts: dict[str, str] = {}
        self.channels: list[str] = list(BASE_CHANNELS)
        hyst = [cfg.thermal, cfg.hw_slowdown, cfg.silent, cfg.xid, cfg.ecc, cfg.power_noise,
                cfg.failure_risk]  # fmt: skip
        self.k_on = np.array([h.k_on for h in hyst], np.int64)
        self.k_off = np.array([h.k_off for h in hyst], np.int64)
        self.state = {f: np.zeros((0, len(self.channels)), _DTYPES[f]) for f in _FIELDS}
        self._slot_cache: dict[tuple[str, ...], IntArray] = {}

    # -- slots and channels -------------------------------------------------------------------

    def _slots(self, host_ids: Sequence[str], device_ids: Sequence[str]) -> IntArray:
        key = tuple(device_ids)
        idx = self._slot_cache.get(key)
        if idx is None:
            for d, h in zip(device_ids, host_ids, strict=True):
                if d not in self.slots:
                    self.slots[d] = len(self.slots)
                    self.hosts[d] = h
            self._resize(len(self.slots), len(self.channels))
            idx = np.array([self.slots[d] for d in key], np.int64)
            if len(self._slot_cache) > 1024:
                self._slot_cache.clear()
            self._slot_cache[key] = idx
        return idx

    def _resize(self, n: int, c: int) -> None:
        n0, c0 = self.state["on"].shape
        if n <= n0 and c <= c0:
            return
        n1 = max(n, 2 * n0, 16) if n > n0 else n0
        for f, a in self.state.items():
            b = np.zeros((n1, max(c, c0)), a.dtype)
            b[:n0, :c0] = a
            self.state[f] = b

    def _channel(self, name: str) -> int:
        if name not in self.channels:
            self.channels.append(name)
            self.k_on = np.append(self.k_on, self.config.anomaly.k_on)
            self.k_off = np.append(self.k_off, self.config.anomaly.k_off)
            self._resize(len(self.slots), len(self.channels))
        return self.channels.index(name)

    # -- the tick ----------------------------------------------------------------------------

    def update(self, sig: DeviceSignals) -> tuple[list[AnomalyScore], list[Alert]]:
        """Step every channel over one tick's signals; return the payloads to publish."""
        cfg = self.config
        idx = self._slots(sig.host_ids, sig.device_ids)
        anom = [self._channel(f"anomaly:{d}:{m}") for d, m in sig.scores]
        n, c = len(idx), len(self.channels)
        above = np.zeros((n, c), bool)
        below = np.ones((n, c), bool)
        sev = np.ones((n, c), np.int64)
        st = self.state
        aux = st["aux"][idx]

        temp, mask, rep = sig.temp_c, sig.throttle_mask, sig.reporting
        hw_th = (mask & THROTTLE_HW_THERMAL) > 0
        sw_th = (mask & THROTTLE_SW_THERMAL) > 0
        with np.errstate(invalid="ignore"):
            above[:, 0] = (temp >= cfg.temp_warn_c) | hw_th | sw_th
            below[:, 0] = ~(temp >= cfg.temp_clear_c) & ~hw_th & ~sw_th & rep
            sev[:, 0] = np.where((temp >= cfg.temp_crit_c) | hw_th, 2, 1)
        slow = (mask & (THROTTLE_HW_POWER_BRAKE | THROTTLE_HW_SLOWDOWN)) > 0
        above[:, 1], below[:, 1] = slow, ~slow & rep
        above[:, 2], below[:, 2], sev[:, 2] = ~rep, rep, 2
        has_xid = sig.xid_code > 0
        above[:, 3], below[:, 3] = has_xid, ~has_xid
        if has_xid.any():
            sev[:, 3] = [xid_severity(int(x)) for x in sig.xid_code]
        rate, unc = sig.ecc_corrected_per_min, sig.ecc_uncorrected_new > 0
        above[:, 4] = (rate >= cfg.ecc_warn_per_min) | unc
        below[:, 4] = (rate < cfg.ecc_clear_per_min) & ~unc
        sev[:, 4] = np.where(unc, 2, 1)
        if sig.power_noise is not None:
            above[:, 5] = sig.power_noise >= cfg.power_noise_on
            below[:, 5] = sig.power_noise < cfg.power_noise_off
        if sig.risk is not None:
            above[:, 6] = sig.risk >= cfg.risk_on
            below[:, 6] = sig.risk < cfg.risk_off
            sev[:, 6] = np.where(sig.risk >= cfg.risk_crit, 2, 1)
        for j, score in zip(anom, sig.scores.values(), strict=True):
            sm = aux[:, j]
            sm = np.where(rep, sm + cfg.anomaly_alpha * (score - sm), sm)
            aux[:, j] = sm
            above[:, j] = sm >= cfg.anomaly_on
            below[:, j] = sm < cfg.anomaly_off

        # Hysteresis, every device and channel at once.
        ts = sig.ts_ns[:, None]
        on, off, firing = st["on"][idx], st["off"][idx], st["firing"][idx]
        run_start = np.where(above & (on == 0), ts, st["run_start_ts_ns"][idx])
        on = np.where(above, on + 1, 0)
        off = np.where(below, off + 1, 0)
        fire = ~firing & (on >= self.k_on)
        resolve = firing & ~fire & (off >= self.k_off)
        sev_old = st["severity"][idx]
        escalate = firing & ~resolve & above & (sev > sev_old)
        start = np.where(fire, run_start, st["start_ts_ns"][idx])
        ticks = np.where(fire, on, np.where(firing, st["ticks"][idx] + 1, 0))
        new_sev = np.where(fire | escalate, sev, sev_old)
        # The XID channel remembers the episode's most severe code.
        aux[:, 3] = np.where(fire[:, 3] | escalate[:, 3], sig.xid_code, aux[:, 3])
        st["on"][idx], st["off"][idx] = on, off
        st["firing"][idx] = (firing | fire) & ~resolve
        st["run_start_ts_ns"][idx], st["start_ts_ns"][idx] = run_start, start
        st["ticks"][idx], st["severity"][idx], st["aux"][idx] = ticks, new_sev, aux

        alerts: list[Alert] = []
        events = fire | resolve | escalate
        if events.any():
            for i, j in np.argwhere(events).tolist():
                name = self.channels[j]
                kind, _, sub = name.partition(":")
                state = "resolved" if resolve[i, j] else "firing"
                n_ticks = int(on[i, j]) if state == "firing" else int(ticks[i, j])
                ctx = _Ctx(sig, i, state, n_ticks * float(sig.interval_s[i]), n_ticks,
                           float(aux[i, j]), sub)  # fmt: skip
                text, metric, evidence = _REASONS[kind](cfg, ctx)
                dev, host = sig.device_ids[i], sig.host_ids[i]
                alerts.append(
                    Alert(
                        id=stable_id(kind, sub, host, dev, int(start[i, j])),
                        kind=kind,
                        severity=SEVERITIES[int(new_sev[i, j])],
                        state=state,
                        host_id=host,
                        device_id=dev,
                        ts_ns=int(sig.ts_ns[i]),
                        started_ts_ns=int(start[i, j]),
                        metric=metric,
                        reason=text,
                        evidence=evidence,
                    )
                )
        anomalies: list[AnomalyScore] = []
        for (det, metric), score, j in zip(sig.scores, sig.scores.values(), anom, strict=True):
            for i in np.flatnonzero(score >= cfg.anomaly_floor).tolist():
                dev, t = sig.device_ids[i], int(sig.ts_ns[i])
                anomalies.append(
                    AnomalyScore(
                        id=stable_id(det, metric, dev, t),
                        host_id=sig.host_ids[i],
                        device_id=dev,
                        ts_ns=t,
                        detector=det,
                        score=float(score[i]),
                        metric=metric,
                        evidence={"smoothed": float(aux[i, j])},
                    )
                )
        return anomalies, alerts

    # -- state -------------------------------------------------------------------------------

    def get_state(self) -> bytes:
        """msgspec (msgpack) checkpoint keyed by device id, then channel."""
        devices = {dev: self._device_state(slot) for dev, slot in self.slots.items()}
        return msgspec.msgpack.encode(_EngineState(devices=devices, hosts=self.hosts))

    @classmethod
    def from_state(cls, state: bytes, config: AlertConfig | None = None) -> AlertEngine:
        eng = cls(config)
        eng._load(msgspec.msgpack.decode(state, type=_EngineState))
        return eng

    def host_state(self, host_id: str, device_ids: Sequence[str]) -> bytes:
        """The checkpoint of one host's devices (``device_ids``), only the channels not at rest
        (an open episode, a run of ticks above its threshold, a smoothed score that is not ~0):
        what the host's next owner needs to go on with the same episodes
        (streams/host_state.py). A quiet channel's count of ticks below its threshold is not
        kept: it only matters while firing."""
        known = [d for d in device_ids if d in self.slots]
        devices = {}
        if known:
            slots = np.array([self.slots[d] for d in known], np.int64)
            st = self.state
            active = st["firing"][slots] | (st["on"][slots] > 0)
            active |= np.abs(st["aux"][slots]) >= _AUX_AT_REST
            rows, chans = np.nonzero(active)
            if rows.size:
                values = {f: st[f][slots[rows], chans].tolist() for f in _FIELDS}
                names = self.channels
                for k, (r, j) in enumerate(zip(rows.tolist(), chans.tolist(), strict=True)):
                    cs = _ChannelState(**{f: values[f][k] for f in _FIELDS})
                    devices.setdefault(known[r], {})[names[j]] = cs
        hosts = {dev: host_id for dev in devices}
        return msgspec.msgpack.encode(_EngineState(devices=devices, hosts=hosts))

    def restore_host(self, host_id: str, state: bytes, device_ids: Sequence[str]) -> None:
        """Put back one host's devices as :meth:`host_state` saved them; every channel of
        ``device_ids`` (the host's devices known here) not in the checkpoint is at rest."""
        s = msgspec.msgpack.decode(state, type=_EngineState)
        slots = [self.slots[d] for d in device_ids if d in self.slots]
        for f in _FIELDS:
            self.state[f][slots, :] = 0
        self._load(s)

    def _device_state(self, slot: int) -> dict[str, _ChannelState]:
        st = self.state
        return {
            name: _ChannelState(**{f: st[f][slot, j].item() for f in _FIELDS})
            for j, name in enumerate(self.channels)
        }

    def _load(self, s: _EngineState) -> None:
        for dev, chans in s.devices.items():
            (slot,) = self._slots([s.hosts[dev]], [dev]).tolist()
            for name, cs in chans.items():
                j = self._channel(name)
                for f in _FIELDS:
                    self.state[f][slot, j] = getattr(cs, f)
        self._slot_cache.clear()


#: A smoothed anomaly score below this is taken as 0 in a host's checkpoint (the ``anomaly``
#: channels fire at ``AlertConfig.anomaly_on``, far above).
_AUX_AT_REST = 0.01


@dataclass(frozen=True, slots=True)
class _Ctx:
    """What a reason function needs about one (device, channel) event."""

    sig: DeviceSignals
    i: int
    state: str
    seconds: float
    ticks: int
    aux: float
    sub: str

    @property
    def dev(self) -> str:
        return self.sig.device_ids[self.i]


Reason = tuple[str, str | None, dict[str, float]]


def _thermal_reason(cfg: AlertConfig, c: _Ctx) -> Reason:
    t = float(c.sig.temp_c[c.i])
    m = int(c.sig.throttle_mask[c.i])
    ev = {"temp_c": t, "throttle_reasons_mask": float(m)}
    if c.state == "resolved":
        return (
            f"{c.dev} thermal resolved: temp_c {t:.1f} °C < {cfg.temp_clear_c:g} °C and no "
            f"thermal throttle, after {c.seconds:g} s",
            "temp_c",
            ev,
        )
    names = throttle_text(m)
    if t >= cfg.temp_warn_c:
        limit = cfg.temp_crit_c if t >= cfg.temp_crit_c else cfg.temp_warn_c
        why = f"{c.dev} temp_c {t:.1f} °C ≥ {limit:g} °C for {c.seconds:g} s"
        if names:
            why += f"; throttle: {names}"
    else:
        why = f"{c.dev} throttle: {names} for {c.seconds:g} s (temp_c {t:.1f} °C)"
    return why, "temp_c", ev


def _slowdown_reason(cfg: AlertConfig, c: _Ctx) -> Reason:
    m = int(c.sig.throttle_mask[c.i])
    ev = {"throttle_reasons_mask": float(m)}
    if c.state == "resolved":
        return f"{c.dev} hardware slowdown cleared", "throttle_reasons_mask", ev
    return (
        f"{c.dev} throttle: {throttle_text(m)} for {c.seconds:g} s",
        "throttle_reasons_mask",
        ev,
    )


def _silent_reason(cfg: AlertConfig, c: _Ctx) -> Reason:
    ev = {"silent_samples": float(c.ticks)}
    if c.state == "resolved":
        return f"{c.dev} reports again after {c.ticks} silent samples", None, ev
    return (
        f"{c.dev} silent for {c.ticks} samples ({c.seconds:g} s) while "
        f"{c.sig.host_ids[c.i]} reports (fell off the bus? driver hang?)",
        None,
        ev,
    )


def _xid_reason(cfg: AlertConfig, c: _Ctx) -> Reason:
    code = int(c.aux)
    ev = {"xid": float(code)}
    if c.state == "resolved":
        return f"{c.dev} no XID for {cfg.xid.k_off} samples (last XID {code})", None, ev
    return f"{c.dev} XID {code}: {XID_MEANING.get(code, 'unknown XID')}", None, ev


def _ecc_reason(cfg: AlertConfig, c: _Ctx) -> Reason:
    rate = float(c.sig.ecc_corrected_per_min[c.i])
    unc = float(c.sig.ecc_uncorrected_new[c.i])
    ev = {"ecc_corrected_per_min": rate, "ecc_uncorrected_new": unc}
    if c.state == "resolved":
        return (
            f"{c.dev} ECC quiet: corrected {rate:.1f}/min < {cfg.ecc_clear_per_min:g}/min",
            "ecc_corrected_total",
            ev,
        )
    if unc > 0:
        return f"{c.dev} {unc:g} new uncorrected ECC error(s)", "ecc_uncorrected_total", ev
    return (
        f"{c.dev} ecc_corrected_total rising {rate:.0f}/min ≥ {cfg.ecc_warn_per_min:g}/min "
        f"for {c.seconds:g} s",
        "ecc_corrected_total",
        ev,
    )


def _noise_reason(cfg: AlertConfig, c: _Ctx) -> Reason:
    assert c.sig.power_noise is not None
    v = float(c.sig.power_noise[c.i])
    ev = {"power_rel_change": v}
    if c.state == "resolved":
        return f"{c.dev} power_w steady again", "power_w", ev
    return (
        f"{c.dev} power_w noisy: mean change {v:.0%} of reading ≥ {cfg.power_noise_on:.0%} "
        f"and ≥ {cfg.power_noise_peer_ratio:g}x its host peers' for {c.seconds:g} s "
        "(power sensor or delivery fault)",
        "power_w",
        ev,
    )


def _risk_reason(cfg: AlertConfig, c: _Ctx) -> Reason:
    assert c.sig.risk is not None
    r = float(c.sig.risk[c.i])
    rules = c.sig.risk_evidence(c.i) if c.sig.risk_evidence is not None else []
    ev = {"risk": r, **{f"rule_{k}": float(v) for k, v in rules}}
    if c.state == "resolved":
        return f"{c.dev} failure risk back to {r:.2f} < {cfg.risk_off:g}", None, ev
    why = ", ".join(f"{k}={v:g}" for k, v in rules) or "-"
    return f"{c.dev} failure risk {r:.2f} ≥ {cfg.risk_on:g}; rules: {why}", None, ev


def _anomaly_reason(cfg: AlertConfig, c: _Ctx) -> Reason:
    det, _, metric = c.sub.partition(":")
    score = float(c.sig.scores[(det, metric)][c.i])
    ev = {"score": score, "smoothed": c.aux}
    if c.state == "resolved":
        return f"{c.dev} {metric} back to normal ({det} score {c.aux:.2f})", metric, ev
    return (
        f"{c.dev} {metric} anomalous: {det} score {c.aux:.2f} ≥ {cfg.anomaly_on:g} "
        f"for {c.seconds:g} s",
        metric,
        ev,
    )


_REASONS = {
    "thermal": _thermal_reason,
    "hw_slowdown": _slowdown_reason,
    "device_silent": _silent_reason,
    "xid": _xid_reason,
    "ecc": _ecc_reason,
    "power_noise": _noise_reason,
    "failure_risk": _risk_reason,
    "anomaly": _anomaly_reason,
}


# -- the monitor -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DetectorSpec:
    """One detector over one metric, all devices at once (``make_detector(name, n, **kw)``)."""

    metric: str
    detector: str = "robust"
    kwargs: dict[str, Any] = field(default_factory=dict)


DEFAULT_DETECTORS: tuple[DetectorSpec, ...] = (
    DetectorSpec("power_w"),
    DetectorSpec("temp_c"),
    DetectorSpec("util_compute_pct"),
)


class _Detectors:
    """One detector per spec over a growable set of device slots (stable order)."""

    def __init__(self, specs: Sequence[DetectorSpec], capacity: int) -> None:
        self.specs = tuple(specs)
        self.capacity = capacity
        self.dets: list[BatchDetector] = [
            make_detector(s.detector, capacity, **s.kwargs) for s in self.specs
        ]
        self.primed = False  # every detector has built its (lazily shaped) arrays
        # Per detector: its per-slot arrays and the objects sized in series (score_slots).
        self._rows_of: dict[int, tuple[list[tuple[Any, str]], list[Any]]] = {}

    def score_slots(
        self, k: int, slots: IntArray, values: FloatArray, ts_ns: int, present: BoolArray
    ) -> FloatArray:
        """Detector ``k``'s scores of ``slots`` (``values``, ``present``: one per slot of
        ``slots``); the other slots are absent, which changes nothing of theirs.

        A series-independent detector (``series_independent``: every per-slot array is its
        own, an absent series learns nothing) runs on those slots' rows only: its per-slot
        arrays are taken for them, updated and put back, the same numbers as a call over every
        slot at a cost in the rows, not in the capacity (a worker's fleet). Others get every
        slot.
        """
        det, cap = self.dets[k], self.capacity
        if not getattr(det, "series_independent", False) or 2 * len(slots) > cap:
            full = np.full(cap, np.nan)
            full[slots] = values
            mask = np.zeros(cap, bool)
            mask[slots] = present
            return det.update_score(full, ts_ns, mask)[slots]
        self.prime()
        if k not in self._rows_of:
            arrays = list(_per_slot_arrays(det, cap, "").values())
            self._rows_of[k] = (arrays, _series_sized(det))
        arrays, sized = self._rows_of[k]
        whole = [getattr(owner, name) for owner, name in arrays]
        try:
            for (owner, name), a in zip(arrays, whole, strict=True):
                setattr(owner, name, a[slots])
            for obj in sized:
                obj.n_series = len(slots)
            scores = det.update_score(values, ts_ns, present)
            for (owner, name), a in zip(arrays, whole, strict=True):
                a[slots] = getattr(owner, name)
        finally:
            for (owner, name), a in zip(arrays, whole, strict=True):
                setattr(owner, name, a)
            for obj in sized:
                obj.n_series = cap
        return scores

    def prime(self) -> None:
        """Have every detector build its arrays, with one all-absent call (which learns
        nothing), so that rows can be put into them before their first sample."""
        if not self.primed:
            for det in self.dets:
                _build_arrays(det, self.capacity)
            self.primed = True

    def grow(self, capacity: int) -> None:
        """Bigger detectors that keep the learned state of the first ``self.capacity`` slots.

        A fresh detector is sized with one all-absent call (which learns nothing), then every
        array whose first axis is the old capacity is copied into the new one's prefix.
        """
        new = []
        for s, old in zip(self.specs, self.dets, strict=True):
            fresh = make_detector(s.detector, capacity, **s.kwargs)
            _build_arrays(fresh, capacity)
            _copy_prefix(old, fresh, self.capacity, capacity)
            new.append(fresh)
        self.dets, self.capacity = new, capacity
        self.primed = True
        self._rows_of.clear()


class _SlotRows(msgspec.Struct):
    """The detectors' rows of some devices (:meth:`DeviceMonitor.host_state`)."""

    specs: list[DetectorSpec]
    devices: list[str]
    layout: list[tuple[str, str, list[int]]]  # (array path, dtype, shape of one row)
    rows: bytes  # float64 (devices, sum of the rows' sizes), C order


def _state_objects(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``obj`` and the objects it holds, directly or in a list or tuple (such as an ensemble's
    members), each with its path prefix."""
    yield prefix, obj
    for k, v in vars(obj).items():
        if isinstance(v, list | tuple):
            for i, item in enumerate(v):
                if _holds_state(item):
                    yield from _state_objects(item, f"{prefix}{k}.{i}.")
        elif _holds_state(v):
            yield from _state_objects(v, f"{prefix}{k}.")


def _per_slot_arrays(obj: Any, n: int, prefix: str) -> dict[str, tuple[Any, str]]:
    """The arrays of ``obj`` and of the objects it holds (:func:`_state_objects`) whose first
    axis is ``n`` slots."""
    return {
        path + k: (owner, k)
        for path, owner in _state_objects(obj, prefix)
        for k, v in vars(owner).items()
        if isinstance(v, np.ndarray) and v.ndim and v.shape[0] == n
    }


def _series_sized(obj: Any) -> list[Any]:
    """``obj`` and the objects it holds that have an ``n_series`` (a detector and an
    ensemble's members)."""
    return [o for _, o in _state_objects(obj) if isinstance(getattr(o, "n_series", None), int)]


def _holds_state(v: Any) -> bool:
    return hasattr(v, "__dict__") and not isinstance(v, type)


def _build_arrays(det: BatchDetector, capacity: int) -> None:
    """One all-absent call (which learns nothing): the detector builds its lazily shaped
    arrays for ``capacity`` slots."""
    det.update_score(np.full(capacity, np.nan), 0, np.zeros(capacity, bool))


def _copy_prefix(old: Any, new: Any, n_old: int, n_new: int) -> None:
    """Copy every per-slot array of ``old`` (``n_old`` slots) into the first rows of the
    same array of ``new`` (``n_new`` slots) where the rows have the same shape."""
    targets = _per_slot_arrays(new, n_new, "")
    for path, (owner, name) in _per_slot_arrays(old, n_old, "").items():
        if path in targets:
            v, w = getattr(owner, name), getattr(*targets[path])
            if w.shape[1:] == v.shape[1:]:
                w[:n_old] = v


class DeviceMonitor:
    """Detectors + failure risk + alert engine over one stream of ``HostSample`` s.

    Devices get a slot the first time they appear (order stable; a device that stops
    appearing keeps its slot and counts as silent while its host reports). One detector per
    :class:`DetectorSpec` scores every slot at once.

    Args:
        detectors: which detector watches which metric.
        config: alert thresholds and hysteresis.
        capacity: initial number of device slots (grows by doubling).
        risk_kwargs: passed to :class:`FailureRisk`.
    """

    def __init__(
        self,
        detectors: Sequence[DetectorSpec] = DEFAULT_DETECTORS,
        config: AlertConfig | None = None,
        *,
        capacity: int = 64,
        risk_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.config = config or AlertConfig()
        self.risk = FailureRisk([], **(risk_kwargs or {}))
        self.engine = AlertEngine(self.config)
        self.detectors = _Detectors(detectors, capacity)
        self.slots: dict[str, int] = {}
        self.host_devices: dict[str, list[str]] = {}
        self.power_prev = np.full(capacity, np.nan)
        self.power_noise = np.zeros(capacity)
        # The layout of each host's current device list (one per host: a host whose devices
        # change gets a new one).
        self._layouts: dict[tuple[str, tuple[str, ...]], _Layout] = {}
        self._layout_key: dict[str, tuple[str, tuple[str, ...]]] = {}

    # -- layout ------------------------------------------------------------------------------

    def _ensure_slots(self, host_id: str, device_ids: Sequence[str]) -> list[str]:
        """Give the host's new devices their slots (growing the detectors); the host's known
        devices, in slot order."""
        known = self.host_devices.setdefault(host_id, [])
        for d in device_ids:
            if d not in self.slots:
                self.slots[d] = len(self.slots)
                known.append(d)
        if len(self.slots) > self.detectors.capacity:
            cap = max(len(self.slots), 2 * self.detectors.capacity)
            self.detectors.grow(cap)
            pad = cap - len(self.power_prev)
            self.power_prev = np.concatenate([self.power_prev, np.full(pad, np.nan)])
            self.power_noise = np.concatenate([self.power_noise, np.zeros(pad)])
        return known

    def _layout(self, sample: HostSample) -> _Layout:
        key = (sample.host_id, tuple(sample.device_ids))
        hit = self._layouts.get(key)
        if hit is not None:
            return hit
        known = self._ensure_slots(sample.host_id, sample.device_ids)
        where = {d: i for i, d in enumerate(known)}
        hit = _Layout(
            list(known),
            np.array([self.slots[d] for d in known], np.int64),
            np.array([where[d] for d in sample.device_ids], np.int64),
            self.risk.rows_of(sample.host_id, known),
        )
        self._forget_layout(sample.host_id)
        self._layouts[key] = hit
        self._layout_key[sample.host_id] = key
        return hit

    def _forget_layout(self, host_id: str) -> None:
        key = self._layout_key.pop(host_id, None)
        if key is not None:
            del self._layouts[key]

    # -- the tick ----------------------------------------------------------------------------

    def observe(self, sample: HostSample) -> tuple[list[AnomalyScore], list[Alert]]:
        """Score one host sample; return the anomaly scores and alerts to publish."""
        return self.observe_batch([sample])

    def observe_batch(
        self, samples: Sequence[HostSample], values: Sequence[FloatArray] | None = None
    ) -> tuple[list[AnomalyScore], list[Alert]]:
        """Several hosts' samples (one tick of a fleet): one vectorized pass for all of them.

        Samples of one host are processed in order (a host seen twice starts a new pass).
        ``values[k]``, when given, is ``samples[k]``'s metrics as a ``(metrics, devices)``
        float64 array (NaN for null; ``accelpilot.streams.aggregates.sample_values``), which the
        caller already has: it saves converting the Python lists again.
        """
        anomalies: list[AnomalyScore] = []
        alerts: list[Alert] = []
        start = 0
        seen: set[str] = set()
        for k, s in enumerate(samples):
            if s.host_id in seen:
                a, b = self._observe_group(
                    samples[start:k], None if values is None else values[start:k]
                )
                anomalies += a
                alerts += b
                start, seen = k, set()
            seen.add(s.host_id)
        a, b = self._observe_group(samples[start:], None if values is None else values[start:])
        return anomalies + a, alerts + b

    def _observe_group(
        self, samples: Sequence[HostSample], values: Sequence[FloatArray] | None = None
    ) -> tuple[list[AnomalyScore], list[Alert]]:
        if not samples:
            return [], []
        cached = [self._layouts.get((s.host_id, tuple(s.device_ids))) for s in samples]
        new = [s for s, lay in zip(samples, cached, strict=True) if lay is None]
        if new:  # the failure-risk rows of every new host at once (one append of its arrays)
            self.risk.add_hosts((s.host_id, s.device_ids) for s in new)
        layouts = [
            self._layout(s) if lay is None else lay for s, lay in zip(samples, cached, strict=True)
        ]
        sizes = [len(lay.known) for lay in layouts]
        n = sum(sizes)
        offsets = np.cumsum([0, *sizes])
        o_list = offsets[:-1].tolist()
        reporting = np.zeros(n, bool)
        size_arr = np.array(sizes, np.int64)
        ts = np.repeat(np.array([s.ts_ns for s in samples], np.int64), size_arr)
        interval = np.repeat(np.array([s.interval_s for s in samples], np.float64), size_arr)
        intervals = self.risk.intervals
        n_int = np.repeat(
            np.array([intervals(s.host_id, s.ts_ns, s.interval_s) for s in samples], np.int64),
            size_arr,
        )
        device_ids: list[str] = []
        host_ids: list[str] = []
        pos: dict[str, int] = {}
        events = []
        for s, lay, o in zip(samples, layouts, o_list, strict=True):
            device_ids += lay.known
            host_ids += [s.host_id] * len(lay.known)
            if s.events:
                events += s.events
                pos.update({d: o + i for i, d in enumerate(lay.known)})
        cols = _columns(samples, layouts, o_list, n, values)
        for col in cols.values():
            reporting |= ~np.isnan(col)
        nan = np.full(n, np.nan)
        slots = np.concatenate([lay.slots for lay in layouts])
        risk_rows = np.concatenate([lay.risk_rows for lay in layouts])

        # Detectors: the group's slots (every other slot is absent this tick).
        scores: dict[tuple[str, str], FloatArray] = {}
        t_max = int(ts.max())
        for k, spec in enumerate(self.detectors.specs):
            values = cols.get(spec.metric, nan)
            sc = self.detectors.score_slots(k, slots, values, t_max, reporting)
            scores[(spec.detector, spec.metric)] = np.where(reporting, sc, 0.0)

        # Failure risk.
        ev = parse_events(events, pos, n)
        self.risk.update_rows(risk_rows, cols, reporting, ev, n_int, interval)
        risk = self.risk.risk(risk_rows)
        mask = np.nan_to_num(cols.get("throttle_reasons_mask", nan)).astype(np.int64)
        sig = DeviceSignals(
            device_ids=device_ids,
            host_ids=host_ids,
            ts_ns=ts,
            interval_s=interval,
            reporting=reporting,
            temp_c=cols.get("temp_c", nan),
            throttle_mask=mask | ev.throttle,
            xid_code=ev.xid_code,
            ecc_corrected_per_min=self.risk.ecc_rate[risk_rows],
            ecc_uncorrected_new=self.risk.new_uncorrected[risk_rows],
            power_noise=self._power_noise(slots, cols.get("power_w", nan), offsets),
            risk=risk,
            scores=scores,
            risk_evidence=lambda i: self.risk.evidence([int(risk_rows[i])])[0],
        )
        return self.engine.update(sig)

    def _power_noise(self, slots: IntArray, power: FloatArray, offsets: IntArray) -> FloatArray:
        """EW mean of |Δpower| / power, zeroed unless ``peer_ratio`` x its host's median."""
        cfg = self.config
        prev = self.power_prev[slots]
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.abs(power - prev) / np.maximum(np.fmax(prev, power), 1.0)
        ok = ~np.isnan(rel)
        v = self.power_noise[slots]
        v = np.where(ok, v + cfg.power_noise_alpha * (rel - v), v)
        self.power_noise[slots] = v
        self.power_prev[slots] = np.where(np.isnan(power), prev, power)
        # Each host's median, computed for all hosts of one size at once (one np.median call
        # over a (hosts, devices) matrix instead of one per host).
        out = v.copy()
        sizes = np.diff(offsets)
        for size in np.unique(sizes).tolist():
            if size < 3:
                continue
            starts = offsets[:-1][sizes == size]
            idx = starts[:, None] + np.arange(size)
            block = v[idx]
            med = np.median(block, axis=1, keepdims=True)
            out[idx] = np.where(block >= cfg.power_noise_peer_ratio * med, block, 0.0)
        return out

    # -- state -------------------------------------------------------------------------------

    def host_state(self, host_id: str) -> bytes:
        """What the host's next owner needs to go on detecting it as this monitor would: the
        alert engine's slice (open episodes), the failure-risk state of its devices and the
        detectors' learned state of its devices (their rows: baselines, warm-up counts)."""
        return self.host_states([host_id])[host_id]

    def host_states(self, host_ids: Iterable[str]) -> dict[str, bytes]:
        """:meth:`host_state` of several hosts (the detectors' rows taken in one pass)."""
        devices = {h: self.host_devices.get(h, []) for h in host_ids}
        rows = self._detector_rows(devices)
        return {
            h: msgspec.msgpack.encode(
                {
                    "engine": self.engine.host_state(h, devs),
                    "risk": self.risk.host_state(h, devs),
                    "detectors": rows[h],
                }
            )
            for h, devs in devices.items()
        }

    def restore_host(self, host_id: str, state: bytes) -> None:
        """Put back :meth:`host_state`'s checkpoint of one host (a record written before the
        detectors' rows were carried has none: those detectors warm up again)."""
        self.restore_hosts({host_id: state})

    def restore_hosts(self, states: dict[str, bytes]) -> None:
        """:meth:`restore_host` for several hosts (a rebalance's): the failure-risk rows of all
        of them in one go."""
        risk = []
        for host_id, state in states.items():
            parts = msgspec.msgpack.decode(state, type=dict[str, bytes])
            if "detectors" in parts:
                self._restore_detector_rows(host_id, parts["detectors"])
            devices = self.host_devices.get(host_id, [])
            self.engine.restore_host(host_id, parts["engine"], devices)
            risk.append((host_id, parts["risk"]))
            self._forget_layout(host_id)
        self.risk.restore_hosts(risk)

    def _slot_arrays(self) -> dict[str, tuple[Any, str]]:
        """Every per-device-slot array (first axis = the slot capacity) of the detectors and of
        this monitor: ``path -> (owner, attribute)``."""
        n = self.detectors.capacity
        found = {"power_prev": (self, "power_prev"), "power_noise": (self, "power_noise")}
        for i, det in enumerate(self.detectors.dets):
            found.update(_per_slot_arrays(det, n, f"detector{i}."))
        return found

    def _detector_rows(self, devices: dict[str, list[str]]) -> dict[str, bytes]:
        """Per host, its devices' rows of every per-slot array, as one float64 matrix (a row
        per device, the arrays side by side as ``layout`` says)."""
        arrays = [(path, getattr(*target)) for path, target in self._slot_arrays().items()]
        layout = [(path, a.dtype.str, list(a.shape[1:])) for path, a in arrays]
        slots = np.array([self.slots[d] for devs in devices.values() for d in devs], np.int64)
        columns = [a[slots].reshape(len(slots), math.prod(a.shape[1:])) for _, a in arrays]
        matrix = np.hstack([c.astype(np.float64) for c in columns])
        specs, out, start = list(self.detectors.specs), {}, 0
        for host, devs in devices.items():
            block = matrix[start : start + len(devs)]
            start += len(devs)
            out[host] = msgspec.msgpack.encode(
                _SlotRows(specs=specs, devices=devs, layout=layout, rows=block.tobytes())
            )
        return out

    def _restore_detector_rows(self, host_id: str, raw: bytes) -> None:
        saved = msgspec.msgpack.decode(raw, type=_SlotRows)
        if saved.specs != list(self.detectors.specs):
            log.warning(
                "%s: detectors configured differently from the record's (%s): they warm up "
                "again", host_id, ", ".join(f"{s.detector}({s.metric})" for s in saved.specs)
            )  # fmt: skip
            return
        if not saved.devices:
            return
        self._ensure_slots(host_id, saved.devices)
        self.detectors.prime()
        slots = np.array([self.slots[d] for d in saved.devices], np.int64)
        width = sum(math.prod(tail) for _, _, tail in saved.layout)
        if len(saved.rows) != 8 * len(slots) * width:
            log.warning("%s: detector rows of %d bytes do not match their layout: they warm "
                        "up again", host_id, len(saved.rows))  # fmt: skip
            return
        matrix = np.frombuffer(saved.rows, dtype=np.float64).reshape(len(slots), width)
        targets, col = self._slot_arrays(), 0
        # Per owner (a detector, or this monitor): every array of the record fits, or none is
        # put back (a detector whose arrays take their shape later, or read-only views, warms
        # up again rather than running on half of its state).
        by_owner: dict[str, list[tuple[Any, FloatArray]]] = {}
        for path, dtype, tail in saved.layout:
            width = math.prod(tail)
            block, col = matrix[:, col : col + width], col + width
            target = targets.get(path)
            arr = None if target is None else getattr(*target)
            fits = (
                arr is not None
                and list(arr.shape[1:]) == tail
                and arr.dtype.str == dtype
                and arr.flags.writeable
            )
            owner = path.partition(".")[0] if "." in path else ""
            by_owner.setdefault(owner, []).append((arr if fits else None, block))
        for owner, parts in by_owner.items():
            if any(arr is None for arr, _ in parts):
                log.warning("%s: %s state does not fit this worker's: it warms up again",
                            host_id, owner or "monitor")  # fmt: skip
                continue
            for arr, block in parts:
                arr[slots] = block.reshape(len(slots), *arr.shape[1:]).astype(arr.dtype)

    def get_state(self) -> bytes:
        """msgspec checkpoint of the whole monitor (detector states as their own bytes)."""
        return msgspec.msgpack.encode(
            {
                "v": 1,
                "config": msgspec.to_builtins(self.config),
                "specs": msgspec.to_builtins(list(self.detectors.specs)),
                "capacity": self.detectors.capacity,
                "detectors": [d.get_state() for d in self.detectors.dets],
                "risk": self.risk.get_state(),
                "engine": self.engine.get_state(),
                "slots": self.slots,
                "host_devices": self.host_devices,
                "power_prev": self.power_prev.tolist(),
                "power_noise": self.power_noise.tolist(),
            }
        )

    @classmethod
    def from_state(cls, state: bytes) -> DeviceMonitor:
        s = msgspec.msgpack.decode(state)
        cfg = msgspec.convert(s["config"], AlertConfig)
        specs = msgspec.convert(s["specs"], list[DetectorSpec])
        mon = cls(specs, cfg, capacity=s["capacity"])
        mon.detectors.dets = [
            type(d).from_state(b) for d, b in zip(mon.detectors.dets, s["detectors"], strict=True)
        ]
        mon.risk = FailureRisk.from_state(s["risk"])
        mon.engine = AlertEngine.from_state(s["engine"], cfg)
        mon.slots = dict(s["slots"])
        mon.host_devices = {h: list(v) for h, v in s["host_devices"].items()}
        mon.power_prev = np.array(s["power_prev"], dtype=np.float64)
        mon.power_noise = np.array(s["power_noise"], dtype=np.float64)
        return mon


def _columns(
    samples: Sequence[HostSample],
    layouts: Sequence[_Layout],
    offsets: list[int],
    n: int,
    arrays: Sequence[FloatArray] | None = None,
) -> dict[str, FloatArray]:
    """Each metric as one ``(n,)`` column over the group's device rows (NaN where absent).

    Samples that share their metric names and device count (a steady fleet: all of them) are
    converted with one ``np.array`` call; the rest column by column.
    """
    cols: dict[str, FloatArray] = {}
    by_shape: dict[tuple[tuple[str, ...], int], list[int]] = {}
    for k, s in enumerate(samples):
        by_shape.setdefault((tuple(s.metrics), len(s.device_ids)), []).append(k)
    for (names, _), members in by_shape.items():
        if not names:
            continue
        if arrays is not None:
            values = np.stack([arrays[k] for k in members])
        else:
            values = np.array([list(samples[k].metrics.values()) for k in members], np.float64)
        rows = np.concatenate([layouts[k].pos + offsets[k] for k in members])
        for m, name in enumerate(names):
            col = cols.get(name)
            if col is None:
                col = cols[name] = np.full(n, np.nan)
            col[rows] = values[:, m, :].reshape(-1)
    return cols


@dataclass(frozen=True, slots=True)
class _Layout:
    """A host's known devices, their detector slots, where the sample's devices sit among
    them, and their failure-risk rows."""

    known: list[str]
    slots: IntArray
    pos: IntArray
    risk_rows: IntArray
