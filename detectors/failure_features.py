"""Streaming per-device features for the learned failure model (:mod:`.failure_model`).

:class:`FailureFeatures` keeps, per device, exponentially weighted windows over the same
columns the failure rules read (:meth:`FailureRisk.update_rows
<accelpilot.detectors.failure_rules.FailureRisk.update_rows>`): ECC and retired-page / row-remap
counters, XID events, temperature, throttle reasons and gaps. Every window is an EW mean or an EW
sum with time constant ``tau_s`` over *logical* time: a step of ``dt_s`` seconds decays the old
value by ``a = exp(-dt_s / tau_s)``:

- EW mean: ``m <- a * m + (1 - a) * x`` (a rate or a fraction "over the last ``tau_s``");
- EW sum:  ``s <- a * s + x`` (a count "in the last ``tau_s``");
- decaying max: ``v <- max(a * v, x)``.

A device that sent nothing in a step (``reporting`` False) keeps its windows (only the gap
windows move), so a silent device does not look healthier with time.

=====  ======================  =================================================================
col    feature                 definition
=====  ======================  =================================================================
0      ``ecc_rate_5m``         log1p(EW mean, 5 min, of corrected ECC errors per minute)
1      ``ecc_rate_60m``        log1p(EW mean, 60 min, of the same)
2      ``ecc_trend``           ``ecc_rate_5m - ecc_rate_60m`` (the rate's slope: > 0 rising)
3      ``ecc_active_60m``      EW mean, 60 min, of "the corrected counter rose this step"
4      ``ecc_uncorr_60m``      log1p(EW sum, 60 min, of uncorrected ECC increments + ``ecc``
                               events)
5      ``retired_60m``         log1p(EW sum, 60 min, of retired-page increments)
6      ``remapped_60m``        log1p(EW sum, 60 min, of remapped-row increments)
7      ``xid_severe_60m``      decaying max (60 min) of the XID weight (rules' table)
8      ``xid_count_60m``       log1p(EW sum, 60 min, of device-level XIDs, i.e. not 13/31/43)
9      ``temp_hot_30m``        EW mean, 30 min, of ``clip((temp_c - (limit - 10)) / 10, 0, 1)``
10     ``temp_peer_5m``        EW mean, 5 min, of (temp_c - mean temp_c of the same host's other
                               reporting devices) / 10 degC (0 without a peer)
11     ``temp_slope_5m``       EW mean, 5 min, of the temperature change per minute / 10 degC
12     ``throttle_hw_5m``      EW mean, 5 min, of "a HW/thermal reason bit is set" (0x8, 0x20,
                               0x40, 0x80)
13     ``throttle_hw_60m``     EW mean, 60 min, of the same
14     ``onsets_60m``          log1p(EW sum, 60 min, of episode onsets: steps where "abnormal"
                               (counter ECC rose, a HW bit, or temp_c >= limit - 5) starts)
15     ``silent_now``          log1p(consecutive intervals without a reading)
16     ``gap_60m``             EW mean, 60 min, of the fraction of intervals missed
=====  ======================  =================================================================

Pure numpy; one :meth:`FailureFeatures.update_rows` call steps any set of devices at once, and
the state round-trips through msgspec (:meth:`get_state` / :meth:`from_state`).
"""

from __future__ import annotations

import msgspec
import numpy as np

from accelpilot.detectors.base import BoolArray, FloatArray

FEATURES: tuple[str, ...] = (
    "ecc_rate_5m",
    "ecc_rate_60m",
    "ecc_trend",
    "ecc_active_60m",
    "ecc_uncorr_60m",
    "retired_60m",
    "remapped_60m",
    "xid_severe_60m",
    "xid_count_60m",
    "temp_hot_30m",
    "temp_peer_5m",
    "temp_slope_5m",
    "throttle_hw_5m",
    "throttle_hw_60m",
    "onsets_60m",
    "silent_now",
    "gap_60m",
)
N_FEATURES = len(FEATURES)

SHORT_S = 300.0
MEDIUM_S = 1800.0
LONG_S = 3600.0
#: HW / thermal throttle reason bits (NVML): HW slowdown, SW thermal, HW thermal, HW power brake.
THROTTLE_HW_BITS = 0x8 | 0x20 | 0x40 | 0x80

#: Raw state columns (one row per device).
_STATE: tuple[str, ...] = (
    "ecc_rate_s",  # EW mean corrected/min, short
    "ecc_rate_l",  # EW mean corrected/min, long
    "ecc_active",
    "ecc_uncorr",
    "retired",
    "remapped",
    "xid_severe",
    "xid_count",
    "temp_hot",
    "temp_peer",
    "temp_slope",
    "thr_s",
    "thr_l",
    "onsets",
    "gap",
    "silent",  # consecutive silent intervals
    "abnormal",  # 1 if the last reporting step was abnormal
    "last_temp",  # NaN until the first reading
)
_S = {name: i for i, name in enumerate(_STATE)}


class _State(msgspec.Struct, kw_only=True):
    v: int = 1
    temp_limit_c: float
    columns: list[str]
    state: list[list[float]]


def _ew_mean(old: FloatArray, x: FloatArray, a: FloatArray) -> FloatArray:
    return a * old + (1.0 - a) * x


class FailureFeatures:
    """EW windows per device (rows grow with :meth:`add_rows`); see the module docstring."""

    def __init__(self, n: int = 0, *, temp_limit_c: float = 90.0) -> None:
        self.temp_limit_c = float(temp_limit_c)
        self.state = np.zeros((0, len(_STATE)))
        self.add_rows(n)

    def __len__(self) -> int:
        return int(self.state.shape[0])

    def add_rows(self, k: int) -> None:
        """Append ``k`` fresh devices."""
        new = np.zeros((k, len(_STATE)))
        new[:, _S["last_temp"]] = np.nan
        self.state = np.concatenate([self.state, new])

    def update_rows(
        self,
        rows: np.ndarray,
        groups: np.ndarray,
        reporting: BoolArray,
        temp_c: FloatArray,
        throttle_mask: np.ndarray,
        deltas: FloatArray,
        xid_weight: FloatArray,
        xid_device_level: FloatArray,
        n_int: np.ndarray,
        dt_s: FloatArray,
    ) -> None:
        """Step ``rows`` by one sample.

        Args:
            rows: device rows (unique).
            groups: host code per row (peers share a code).
            reporting: whether each row sent a reading.
            temp_c: temperature (NaN = absent).
            throttle_mask: throttle reason bits (0 = none).
            deltas: ``(n, 4)`` counter increases since the previous reading: corrected ECC,
                uncorrected ECC (events included), retired pages, remapped rows.
            xid_weight: weight of the step's most severe XID (0 = none).
            xid_device_level: number of device-level XIDs this step.
            n_int: whole intervals since the previous sample of the row's host (>= 1).
            dt_s: seconds those intervals span.
        """
        st = self.state[rows]
        a_s = np.exp(-dt_s / SHORT_S)
        a_m = np.exp(-dt_s / MEDIUM_S)
        a_l = np.exp(-dt_s / LONG_S)
        rep = reporting
        col = _S

        def upd(name: str, new: FloatArray) -> None:
            st[:, col[name]] = np.where(rep, new, st[:, col[name]])

        corr, unc, pages, rows_remap = deltas.T
        per_min = corr * 60.0 / np.maximum(dt_s, 1e-9)
        upd("ecc_rate_s", _ew_mean(st[:, col["ecc_rate_s"]], per_min, a_s))
        upd("ecc_rate_l", _ew_mean(st[:, col["ecc_rate_l"]], per_min, a_l))
        ecc_up = (corr > 0).astype(float)
        upd("ecc_active", _ew_mean(st[:, col["ecc_active"]], ecc_up, a_l))
        upd("ecc_uncorr", a_l * st[:, col["ecc_uncorr"]] + unc)
        upd("retired", a_l * st[:, col["retired"]] + pages)
        upd("remapped", a_l * st[:, col["remapped"]] + rows_remap)
        # XIDs arrive as events, also for a device whose metrics are missing: always counted.
        st[:, col["xid_severe"]] = np.maximum(a_l * st[:, col["xid_severe"]], xid_weight)
        st[:, col["xid_count"]] = a_l * st[:, col["xid_count"]] + xid_device_level

        has_t = rep & ~np.isnan(temp_c)
        t = np.where(has_t, temp_c, 0.0)
        hot = np.clip((t - (self.temp_limit_c - 10.0)) / 10.0, 0.0, 1.0)
        st[:, col["temp_hot"]] = np.where(
            has_t, _ew_mean(st[:, col["temp_hot"]], hot, a_m), st[:, col["temp_hot"]]
        )
        n_g = int(groups.max()) + 1 if len(groups) else 0
        g_sum = np.bincount(groups, weights=t, minlength=n_g)
        g_cnt = np.bincount(groups, weights=has_t.astype(float), minlength=n_g)
        peers = g_cnt[groups] - 1.0
        peer_mean = (g_sum[groups] - t) / np.maximum(peers, 1.0)
        peer_dev = np.where(peers >= 1.0, (t - peer_mean) / 10.0, 0.0)
        st[:, col["temp_peer"]] = np.where(
            has_t, _ew_mean(st[:, col["temp_peer"]], peer_dev, a_s), st[:, col["temp_peer"]]
        )
        last_t = st[:, col["last_temp"]]
        slope_ok = has_t & ~np.isnan(last_t)
        slope = np.where(slope_ok, (t - np.nan_to_num(last_t)) * 6.0 / np.maximum(dt_s, 1e-9), 0.0)
        st[:, col["temp_slope"]] = np.where(
            slope_ok, _ew_mean(st[:, col["temp_slope"]], slope, a_s), st[:, col["temp_slope"]]
        )
        st[:, col["last_temp"]] = np.where(has_t, t, last_t)

        thr = ((throttle_mask.astype(np.int64) & THROTTLE_HW_BITS) > 0).astype(float)
        upd("thr_s", _ew_mean(st[:, col["thr_s"]], thr, a_s))
        upd("thr_l", _ew_mean(st[:, col["thr_l"]], thr, a_l))

        abnormal = ((corr > 0) | (thr > 0) | (t >= self.temp_limit_c - 5.0)).astype(float)
        onset = abnormal * (1.0 - st[:, col["abnormal"]])
        upd("onsets", a_l * st[:, col["onsets"]] + onset)
        upd("abnormal", abnormal)

        # Gaps: the fraction of the step's intervals that carried no reading.
        missed = np.where(rep, (n_int - 1.0) / np.maximum(n_int, 1.0), 1.0)
        st[:, col["gap"]] = _ew_mean(st[:, col["gap"]], missed, a_l)
        st[:, col["silent"]] = np.where(rep, 0.0, st[:, col["silent"]] + n_int)
        self.state[rows] = st

    def features(self, rows: np.ndarray | None = None) -> FloatArray:
        """The ``(n, N_FEATURES)`` matrix (column order :data:`FEATURES`)."""
        st = self.state if rows is None else self.state[rows]
        c = _S
        e_s = np.log1p(np.maximum(st[:, c["ecc_rate_s"]], 0.0))
        e_l = np.log1p(np.maximum(st[:, c["ecc_rate_l"]], 0.0))
        return np.stack(
            [
                e_s,
                e_l,
                e_s - e_l,
                st[:, c["ecc_active"]],
                np.log1p(st[:, c["ecc_uncorr"]]),
                np.log1p(st[:, c["retired"]]),
                np.log1p(st[:, c["remapped"]]),
                st[:, c["xid_severe"]],
                np.log1p(st[:, c["xid_count"]]),
                st[:, c["temp_hot"]],
                st[:, c["temp_peer"]],
                st[:, c["temp_slope"]],
                st[:, c["thr_s"]],
                st[:, c["thr_l"]],
                np.log1p(st[:, c["onsets"]]),
                np.log1p(st[:, c["silent"]]),
                st[:, c["gap"]],
            ],
            axis=1,
        )

    # -- state -------------------------------------------------------------------------------

    def get_state(self) -> bytes:
        return msgspec.msgpack.encode(
            _State(
                temp_limit_c=self.temp_limit_c,
                columns=list(_STATE),
                state=[[float(v) for v in r] for r in self.state.tolist()],
            )
        )

    @classmethod
    def from_state(cls, state: bytes) -> FailureFeatures:
        s = msgspec.msgpack.decode(state, type=_State)
        if s.columns != list(_STATE):
            raise ValueError(
                "failure-feature checkpoint has other columns than this version "
                f"({s.columns} != {list(_STATE)}); start the feature state afresh"
            )
        obj = cls(0, temp_limit_c=s.temp_limit_c)
        obj.state = np.array(s.state, dtype=np.float64).reshape(len(s.state), len(_STATE))
        return obj
