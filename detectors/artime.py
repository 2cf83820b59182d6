"""ARTime: adaptive-resonance anomaly detector (after M. Hampton's ARTime, NAB 2021), numpy.

A re-implementation in numpy of the algorithm of ARTimeNAB.jl (the Julia detector that
leads NAB), written from its published description and source; per series:

1. **Downsample** the raw stream by ``sstep`` samples (about 104 downsampled points per
   probation period): each block becomes its mean, or its extreme (max or min, whichever
   lies further from a running average) when that is >= 10 % away from the mean.
2. **Normalize and discretize** with the series' value range into ``n_levels`` (80) levels;
   values within ``chomp`` (0.075) of an approximate running median snap to the median.
3. **Features**: the last ``window`` (8) levels, and their min-max scaled full Haar wavelet
   transform, min-max scaled: 16 numbers in [0, 1].
4. **Dual-vigilance fuzzy ART** (complement coding, fast commit): a feature vector resonates
   with a category when its match ``M = (|x ^ w| / |w|)^3 * e^2`` (``e``: match of the newest
   level alone) reaches the upper vigilance ``rho_ub`` (the category learns ``w <- x ^ w``);
   between ``rho_lb`` and ``rho_ub`` it founds a new category in an existing cluster; below
   ``rho_lb`` it founds a new cluster: a *novelty*, the only event that can score.
5. **Adaptive vigilance**: the initial ``rho`` comes from an ART pass over the probation
   features; afterwards ``rho_ub`` follows the running mean match (capped at 0.97) and
   ``rho_lb`` rises towards the lowest recent match or decays by recent shortfalls, never
   below the mean match of past anomalies; updates every half trend window and 12 steps
   after an anomaly.
6. **Masking**: after a novelty or a vigilance update, further novelties only score if
   their match is well below the last anomaly's (0.7x, 0.9x within 12 steps of it).
7. **Score** of a novelty: how far its match lies below both vigilances, plus the energy
   (newest level) mismatch, capped at 1. Every other sample scores 0.

Range: NAB's protocol hands every detector the file's min and max (``inputMin`` /
``inputMax`` in ``nab/detectors/base.py``) and ARTime its length (``ARTime.init(inputMin,
inputMax, length)``); the NAB runner passes them here as ``value_min`` / ``value_max`` /
``n_samples`` (docs/detectors.md, "NAB protocol"). Without them (a live stream) the range
is the min/max of the probation samples widened by half their spread on each side (the
samples are buffered and replayed once it is known; their scores are 0 either way), and
later levels are clipped to it.

Bounded memory: at most ``max_categories`` ART categories per series (a fixed-size
array); when full, the least recently matched category is replaced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from accelpilot.detectors.base import BatchDetector, BoolArray, FloatArray, IntArray

WINDOW = 8
WINDOWS_PER_PROBATION = 13
N_LEVELS = 80
CHOMP = 0.075
INITIAL_RHO = 0.80
RHO_UB_CAP = 0.97
#: Probation period for long (or unknown-length) streams, in raw samples (ARTime's 750).
LONG_PROBATION = 750
#: Without a given range: the probation samples' range, widened by this share each side.
RANGE_MARGIN = 0.5
SQRT_HALF = 1.0 / math.sqrt(2.0)


def probation_samples(n_samples: int | None) -> int:
    """ARTime's probation period: 15 % of a file shorter than 5000 samples, else 750; even."""
    pp = LONG_PROBATION if n_samples is None or n_samples >= 5000 else int(0.15 * n_samples)
    return pp - pp % 2


def haar(x: Sequence[float]) -> list[float]:
    """Full orthonormal Haar transform of a power-of-two vector: ``[a_L, d_L, ..., d_1]``.

    Details are ``(odd - even) / sqrt(2)`` per pair, the sign convention of Wavelets.jl's
    ``dwt(x, wavelet(WT.haar))`` that ARTime uses (the other sign changes 16 of the 31
    NAB files' detections). Plain floats: 8 numbers are cheaper without numpy.

    >>> [round(v, 6) for v in haar([1.0, 1.0, 1.0, 1.0])]
    [2.0, 0.0, 0.0, 0.0]
    """
    out: list[float] = []
    a = [float(v) for v in x]
    while len(a) > 1:
        even, odd = a[0::2], a[1::2]
        out = [(o - e) * SQRT_HALF for e, o in zip(even, odd, strict=True)] + out
        a = [(e + o) * SQRT_HALF for e, o in zip(even, odd, strict=True)]
    return a + out


def _minmax(x: Sequence[float]) -> list[float]:
    low = min(x)
    shifted = [v - low for v in x]
    top = max(shifted)
    return [v / top for v in shifted] if top != 0 else shifted


def pair_similarity(features: FloatArray) -> FloatArray:
    """ARTime's near-cosine similarity between the columns of ``features`` ``(dim, n)``."""
    norms = np.linalg.norm(features, axis=0)
    safe = np.where(norms == 0, 1.0, norms)
    sim = (features.T @ features) / np.outer(safe, safe)
    zero = norms == 0
    # A zero vector against another: 1 - the other's norm (both zero: 1).
    sim[zero, :] = 1.0 - norms[None, :]
    sim[:, zero] = 1.0 - norms[:, None]
    np.fill_diagonal(sim, 1.0)
    return sim


@dataclass
class _Art:
    """Dual-vigilance fuzzy ART over complement-coded vectors, fixed capacity."""

    dim: int
    capacity: int
    rho_lb: float = 0.0
    rho_ub: float = 0.0
    w: FloatArray = field(init=False)
    #: Per category: L1 norm of w (0 -> 0.001), and w's newest level plus its complement.
    norm: FloatArray = field(init=False)
    energy: FloatArray = field(init=False)
    last_used: IntArray = field(init=False)
    n: int = 0
    clock: int = 0
    zero_energy: bool = False

    def __post_init__(self) -> None:
        self.w = np.zeros((self.capacity, 2 * self.dim))
        self.norm = np.zeros(self.capacity)
        self.energy = np.zeros(self.capacity)
        self.last_used = np.zeros(self.capacity, np.int64)

    def train(self, f: FloatArray, learning: bool = True) -> tuple[bool, float, float]:
        """Present ``f``; returns ``(novel, best match, its energy match)``.

        ``novel``: no category reached ``rho_lb`` (or ``learning`` is off). The first call
        only creates the all-ones category (match 0), as the original does.
        """
        self.clock += 1
        x = np.concatenate([f, 1.0 - f])
        if self.n == 0:
            self._commit(np.ones(2 * self.dim))
            return True, 0.0, 0.0
        if self.zero_energy:
            # A category with no energy left matches 0/0 = NaN; the original visits NaN
            # matches first and stops there: a mismatch.
            if learning:
                self._commit(x)
            return True, 0.0, 0.0
        n = self.n
        em = np.minimum(x, self.w[:n])
        fsim = em.sum(axis=1) / self.norm[:n]
        e, last = self.dim - 1, 2 * self.dim - 1
        esim = (em[:, e] + em[:, last]) / self.energy[:n]
        m = fsim**3 * esim**2
        best = int(np.argmax(m))
        top = float(m[best])
        a, ae = (top, float(esim[best])) if top > 0 else (0.0, 0.0)
        if not learning:
            return True, a, ae
        if top >= self.rho_ub:
            rows = np.flatnonzero(m >= self.rho_ub)
            self._set_rows(rows, em[rows])
            self.last_used[rows] = self.clock
            return False, a, ae
        self.last_used[best] = self.clock
        self._commit(x)
        return top < self.rho_lb, a, ae

    def _set_rows(self, rows: IntArray, w: FloatArray) -> None:
        self.w[rows] = w
        norm = w.sum(axis=1)
        self.norm[rows] = np.where(norm == 0, 0.001, norm)
        energy = w[:, self.dim - 1] + w[:, 2 * self.dim - 1]
        self.energy[rows] = energy
        self.zero_energy = bool((self.energy[: self.n] == 0).any())

    def train_batch(self, features: FloatArray) -> FloatArray:
        """Present each column in turn (the first only initializes); the matches."""
        return np.array([self.train(col)[1] for col in features.T])

    def _commit(self, x: FloatArray) -> None:
        if self.n < self.capacity:
            slot = self.n
            self.n += 1
        else:  # full: replace the least recently matched category (never the first)
            slot = 1 + int(np.argmin(self.last_used[1:]))
        self._set_rows(np.array([slot]), x[None, :])
        self.last_used[slot] = self.clock


class _Series:
    """ARTime state of one series."""

    def __init__(
        self,
        value_min: float | None,
        value_max: float | None,
        n_samples: int | None,
        max_categories: int,
    ) -> None:
        self.pp = probation_samples(n_samples)
        self.sstep = max(1, round(self.pp // (WINDOW * WINDOWS_PER_PROBATION)))
        self.trend_window = self.pp // self.sstep
        self.mask = int(WINDOW * 1.5)
        self.dmin = value_min
        self.dmax = value_max
        self.pending: list[float] = []  # raw samples held until the range is known
        self.i = 1  # raw sample counter (1-based as the original)
        self.block: list[float] = [0.0] * self.sstep
        self.dsi = 1  # downsampled step counter
        self.ds_average = 0.0
        self.medbin = np.zeros(N_LEVELS + 1, np.int64)
        self.medlevel = self.below = self.above = 0
        self.f_window = np.zeros(WINDOW)
        self.art = _Art(2 * WINDOW, max_categories)
        self.probation_features: list[FloatArray] = []
        self.last_anomaly_i = 0
        self.last_anomaly_sim = 0.0
        self.last_rho_update_i = 0
        self.mask_after_cat = False
        self.no_new_cat_count = 0
        self.anomaly_sim_sum = 0.0
        self.anomaly_sim_count = 0
        self.anomaly_sim_last = 0.0
        self.match_sum = 0.0
        self.match_count = 0
        self.sim_window = np.ones(self.trend_window // 2 + 1)
        self.sim_diff_window = np.zeros(self.trend_window + 1)

    # ---------------------------------------------------------------- raw samples
    def step(self, value: float) -> float:
        """Score one raw sample (0 unless it closes a downsampling block that is novel)."""
        if self.dmin is None:
            self.pending.append(value)
            if len(self.pending) < self.pp:
                return 0.0
            lo, hi = float(np.min(self.pending)), float(np.max(self.pending))
            margin = RANGE_MARGIN * (hi - lo)
            self.dmin, self.dmax = lo - margin, hi + margin
            held, self.pending = self.pending, []
            for v in held[:-1]:
                self._sample(v)
            return self._sample(held[-1])
        return self._sample(value)

    def _sample(self, value: float) -> float:
        self.block.pop(0)
        self.block.append(value)
        score = 0.0
        if self.i % self.sstep == 0:
            score = self._features(self._downsample())
            self.dsi += 1
        self.i += 1
        return score

    def _downsample(self) -> float:
        assert self.dmin is not None and self.dmax is not None
        block = self.block  # at most 7 samples: a sequential sum is numpy's sum here
        mean, hi, lo = sum(block) / len(block), max(block), min(block)
        if self.dsi == 1:
            self.ds_average = mean
        self.ds_average = (self.ds_average + mean) / 2
        ds = lo if abs(hi - self.ds_average) < abs(lo - self.ds_average) else hi
        if abs(ds - mean) < 0.1 * mean:  # a spike must be at least 10 %
            ds = mean
        ds -= self.dmin
        if self.dmax != self.dmin:
            ds /= self.dmax - self.dmin
        level = min(max(round(ds * N_LEVELS), 0), N_LEVELS)
        ds = level / N_LEVELS
        return self._snap_to_median(level, ds)

    def _snap_to_median(self, level: int, ds: float) -> float:
        """Approximate running median of the levels (ARTime's); snap ``ds`` near it."""
        self.medbin[level] += 1
        half = self.dsi // 2
        if self.dsi == 1:
            self.medlevel = level
        if self.medlevel > level:
            self.below += 1
        elif self.medlevel < level:
            self.above += 1
        if half < self.above:
            self.below += self.medbin[self.medlevel]
            self.medlevel += 1
            while self.medbin[self.medlevel] == 0:
                self.medlevel += 1
            self.above -= self.medbin[self.medlevel]
        elif half < self.below:
            self.above += self.medbin[self.medlevel]
            self.medlevel -= 1
            while self.medbin[self.medlevel] == 0:
                self.medlevel -= 1
            self.below -= self.medbin[self.medlevel]
        med = self.medlevel / N_LEVELS
        return med if abs(ds - med) < CHOMP else ds

    def _features(self, ds: float) -> float:
        self.f_window[:-1] = self.f_window[1:]
        self.f_window[-1] = ds
        f = np.zeros(2 * WINDOW)
        if self.dsi >= WINDOW:
            levels = self.f_window.tolist()
            f = np.array(_minmax(haar(_minmax(levels))) + levels)
        i = self.dsi
        if i > self.trend_window:
            return self._detect(f, i)
        self.probation_features.append(f)
        if i == self.trend_window:
            feats = np.stack(self.probation_features, axis=1)
            self.probation_features = []
            rho = self._initial_rho(feats[:, WINDOW - 1 :])
            self.art.rho_lb = self.art.rho_ub = rho
            for k in range(feats.shape[1]):
                self._detect(feats[:, k], k + 1)
        return 0.0

    # ---------------------------------------------------------------- ART
    def _initial_rho(self, feats: FloatArray) -> float:
        """Mean match of the second half of an ART pass (rho 0.8) over the probation
        features, least typical first."""
        order = np.argsort(pair_similarity(feats).sum(axis=0), kind="stable")
        art = _Art(2 * WINDOW, feats.shape[1] + 1, INITIAL_RHO, INITIAL_RHO)
        matches = art.train_batch(feats[:, order])
        return float(matches[self.trend_window // 2 - 1 :].mean())

    def _detect(self, f: FloatArray, i: int) -> float:
        art = self.art
        since = i - self.last_anomaly_i
        rho_after_anomaly = since == self.mask
        rho_for_trend = (i - self.last_rho_update_i) >= self.trend_window // 2
        mask_after_anomaly = since <= self.mask
        if (
            i > self.trend_window + self.mask
            and self.mask_after_cat
            and self.no_new_cat_count >= self.mask
        ):
            self.mask_after_cat = False
        novel, a, ae = art.train(f, learning=i >= WINDOW)
        self.no_new_cat_count = 0 if novel else self.no_new_cat_count + 1
        self.match_sum += a
        self.match_count += 1
        self.sim_window[:-1] = self.sim_window[1:]
        self.sim_window[-1] = a
        self.sim_diff_window[:-1] = self.sim_diff_window[1:]
        self.sim_diff_window[-1] = art.rho_ub - a
        if since < self.mask and self.anomaly_sim_count and a < self.anomaly_sim_last:
            self.anomaly_sim_sum += a - self.anomaly_sim_last
            self.anomaly_sim_last = a
        masking = self.mask_after_cat or mask_after_anomaly
        below_last = a < self.last_anomaly_sim * (0.90 if mask_after_anomaly else 0.70)
        score = 0.0
        if i > self.trend_window and novel and (not masking or below_last):
            score = self._confidence(a, ae)
            self.anomaly_sim_sum += a
            self.anomaly_sim_count += 1
            self.anomaly_sim_last = a
            self.last_anomaly_sim = a
            self.last_anomaly_i = i
        self.mask_after_cat = novel or self.mask_after_cat
        if i > self.trend_window and (rho_after_anomaly or rho_for_trend):
            self._update_rho(i)
        return score

    def _update_rho(self, i: int) -> None:
        art = self.art
        lowest = float(self.sim_window.min())
        new_ub = min(RHO_UB_CAP, self.match_sum / self.match_count)
        prev_lb = art.rho_lb
        if prev_lb <= lowest:
            new_lb = prev_lb + (lowest - prev_lb) * 0.19
        else:
            decr = 0.0
            if i > 2 * self.trend_window:
                short = self.sim_diff_window[self.sim_diff_window > 0.05]
                if len(short):
                    decr = float(np.minimum(short, 0.37).mean())
            new_lb = prev_lb - max(0.01, decr) / 2
            if self.anomaly_sim_count:
                new_lb = max(self.anomaly_sim_sum / self.anomaly_sim_count, new_lb)
        art.rho_lb = min(new_ub, new_lb)
        art.rho_ub = new_ub
        self.last_rho_update_i = i
        self.mask_after_cat = True

    def _confidence(self, sim: float, energy: float) -> float:
        sim = min(0.999, sim)
        ub = ((1 - sim) - (1 - self.art.rho_ub)) / (1 - sim)
        lb = ((1 - sim) - (1 - self.art.rho_lb)) / (1 - sim)
        s = ub * 0.35 + lb * 0.65 + (1.0 - energy) * 1.5
        return min(max(round(s, 6), 0.0), 1.0)


class ARTime(BatchDetector):
    """ARTime per series (see the module docstring).

    Args:
        value_min, value_max: each series' value range (NAB protocol: the file's min and
            max), a scalar or ``(n_series,)``; ``None`` learns it from the probation samples.
        n_samples: each series' length, used only for the probation period (NAB protocol);
            ``None`` = long stream (750 samples).
        max_categories: ART categories kept per series (memory bound).
        seed: unused (ARTime is deterministic); accepted like every detector.

    Multi-metric inputs: the first metric is scored (ARTime is univariate).
    """

    name = "artime"
    series_independent = True
    #: The NAB runner hands this detector each file's min, max and length (NAB's protocol).
    takes_file_range = True

    def __init__(
        self,
        n_series: int,
        value_min: float | Sequence[float] | npt.NDArray[np.float64] | None = None,
        value_max: float | Sequence[float] | npt.NDArray[np.float64] | None = None,
        n_samples: int | Sequence[int] | npt.NDArray[np.int64] | None = None,
        max_categories: int = 1024,
        seed: int = 0,
    ) -> None:
        super().__init__(n_series)
        if (value_min is None) != (value_max is None):
            raise ValueError("give both value_min and value_max, or neither")
        lo = _per_series(value_min, n_series)
        hi = _per_series(value_max, n_series)
        length = _per_series(n_samples, n_series)
        self.series = [
            _Series(
                lo[k],
                hi[k],
                None if length[k] is None else int(length[k]),  # type: ignore[arg-type]
                max_categories,
            )
            for k in range(n_series)
        ]

    def _update_score(self, values: FloatArray, ts_ns: IntArray, present: BoolArray) -> FloatArray:
        out = np.zeros(self.n_series)
        for k in np.flatnonzero(present):
            v = values[k, 0]
            if np.isfinite(v):
                out[k] = self.series[k].step(float(v))
        return out


def _per_series(x: object, n: int) -> list[float | None]:
    if x is None:
        return [None] * n
    arr = np.broadcast_to(np.asarray(x, np.float64), (n,))
    return [float(v) for v in arr]
