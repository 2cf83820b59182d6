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
is the min/max of the probation samples widened by their spread on each side (the
samples are buffered and replayed once it is known; their scores are 0 either way), and
later levels are clipped to it.

Bounded memory: at most ``max_categories`` ART categories per series (a fixed-size
array); when full, the least recently matched category is replaced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
RANGE_MARGIN = 1.0
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


class _ArtBank:
    """Dual-vigilance fuzzy ART over complement-coded vectors, one per series, batched.

    Every series has a fixed-capacity category array (rows ``[0, n)`` in use); a call to
    :meth:`train` presents one feature vector to each of several series at once.
    """

    def __init__(self, n_series: int, dim: int, capacity: int) -> None:
        self.dim = dim
        self.capacity = capacity
        self.w = np.zeros((n_series, capacity, 2 * dim))
        #: Per category: L1 norm of w (0 -> 0.001), and w's newest level plus its complement.
        self.norm = np.zeros((n_series, capacity))
        self.energy = np.zeros((n_series, capacity))
        self.last_used = np.zeros((n_series, capacity), np.int64)
        self.n = np.zeros(n_series, np.int64)
        self.clock = np.zeros(n_series, np.int64)
        self.zero_energy = np.zeros(n_series, bool)
        self.rho_lb = np.zeros(n_series)
        self.rho_ub = np.zeros(n_series)

    def train(
        self, ks: IntArray, features: FloatArray, learning: BoolArray
    ) -> tuple[BoolArray, FloatArray, FloatArray]:
        """Present ``features[j]`` to series ``ks[j]`` (distinct); per series
        ``(novel, best match, its energy match)``.

        ``novel``: no category reached ``rho_lb`` (or ``learning`` is off). A series' first
        call only creates the all-ones category (match 0), as the original does.
        """
        m_count = len(ks)
        novel = np.ones(m_count, bool)
        a = np.zeros(m_count)
        ae = np.zeros(m_count)
        self.clock[ks] += 1
        x = np.concatenate([features, 1.0 - features], axis=1)
        fresh = self.n[ks] > 0
        for j in np.flatnonzero(~fresh):
            self._commit(int(ks[j]), np.ones(2 * self.dim))
        # A category with no energy left matches 0/0 = NaN; the original visits NaN
        # matches first and stops there: a mismatch (and learns the sample as a category).
        nan_case = fresh & self.zero_energy[ks]
        for j in np.flatnonzero(nan_case & learning):
            self._commit(int(ks[j]), x[j])
        run = np.flatnonzero(fresh & ~nan_case)
        if len(run) == 0:
            return novel, a, ae
        rk = ks[run]
        n = self.n[rk]
        width = int(n.max())
        # One series, or every series (a synchronous fleet): views, no copy.
        sel: slice | IntArray = rk
        if len(rk) == 1:
            sel = slice(int(rk[0]), int(rk[0]) + 1)
        elif len(rk) == self.w.shape[0]:
            sel = slice(None)
        w, norm, energy = self.w[sel, :width], self.norm[sel, :width], self.energy[sel, :width]
        em = np.minimum(x[run][:, None, :], w)
        valid = np.arange(width)[None, :] < n[:, None]
        e, last = self.dim - 1, 2 * self.dim - 1
        with np.errstate(invalid="ignore", divide="ignore"):
            fsim = em.sum(axis=2) / norm
            esim = (em[:, :, e] + em[:, :, last]) / energy
        m = np.where(valid, fsim**3 * esim**2, -1.0)
        best = np.argmax(m, axis=1)
        rows = np.arange(len(run))
        top = m[rows, best]
        positive = top > 0
        a[run] = np.where(positive, top, 0.0)
        ae[run] = np.where(positive, esim[rows, best], 0.0)
        learn = learning[run]
        resonant = learn & (top >= self.rho_ub[rk])
        novel[run] = ~learn | (~resonant & (top < self.rho_lb[rk]))
        # Resonance: every category at or above rho_ub learns (fast commit: w <- x ^ w).
        r_rows, r_cols = np.nonzero(resonant[:, None] & valid & (m >= self.rho_ub[rk][:, None]))
        if len(r_rows):
            self._set(rk[r_rows], r_cols, em[r_rows, r_cols])
            self.last_used[rk[r_rows], r_cols] = self.clock[rk[r_rows]]
            self._check_energy(np.unique(rk[r_rows]))
        # No resonance: the sample becomes a category (new cluster if below rho_lb).
        for j in np.flatnonzero(learn & ~resonant):
            k = int(rk[j])
            self.last_used[k, best[j]] = self.clock[k]
            self._commit(k, x[run[j]])
        return novel, a, ae

    def train_one(self, k: int, f: FloatArray, learning: bool = True) -> tuple[bool, float, float]:
        """:meth:`train` for one series (the sequential probation pass): the same step on
        row views, without the batching overhead."""
        self.clock[k] += 1
        x = np.concatenate([f, 1.0 - f])
        n = int(self.n[k])
        if n == 0:
            self._commit(k, np.ones(2 * self.dim))
            return True, 0.0, 0.0
        if self.zero_energy[k]:
            if learning:
                self._commit(k, x)
            return True, 0.0, 0.0
        em = np.minimum(x, self.w[k, :n])
        e, last = self.dim - 1, 2 * self.dim - 1
        m = (em.sum(axis=1) / self.norm[k, :n]) ** 3 * (
            (em[:, e] + em[:, last]) / self.energy[k, :n]
        ) ** 2
        best = int(np.argmax(m))
        top = float(m[best])
        a, ae = (top, float((em[best, e] + em[best, last]) / self.energy[k, best]))
        if top <= 0:
            a, ae = 0.0, 0.0
        if not learning:
            return True, a, ae
        if top >= self.rho_ub[k]:
            cols = np.flatnonzero(m >= self.rho_ub[k])
            self._set(np.full(len(cols), k), cols, em[cols])
            self.last_used[k, cols] = self.clock[k]
            self._check_energy(np.array([k]))
            return False, a, ae
        self.last_used[k, best] = self.clock[k]
        self._commit(k, x)
        return top < self.rho_lb[k], a, ae

    def _set(self, ks: IntArray, cols: IntArray, w: FloatArray) -> None:
        self.w[ks, cols] = w
        norm = w.sum(axis=1)
        self.norm[ks, cols] = np.where(norm == 0, 0.001, norm)
        self.energy[ks, cols] = w[:, self.dim - 1] + w[:, 2 * self.dim - 1]

    def _check_energy(self, ks: IntArray) -> None:
        for k in ks:
            self.zero_energy[k] = bool((self.energy[k, : self.n[k]] == 0).any())

    def _commit(self, k: int, x: FloatArray) -> None:
        if self.n[k] < self.capacity:
            slot = int(self.n[k])
            self.n[k] += 1
        else:  # full: replace the least recently matched category (never the first)
            slot = 1 + int(np.argmin(self.last_used[k, 1:]))
        self._set(np.array([k]), np.array([slot]), x[None, :])
        self.last_used[k, slot] = self.clock[k]
        self._check_energy(np.array([k]))


class _Series:
    """ARTime state of one series."""

    def __init__(
        self,
        bank: _ArtBank,
        k: int,
        value_min: float | None,
        value_max: float | None,
        n_samples: int | None,
    ) -> None:
        self.bank = bank
        self.k = k
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
    def step(self, value: float) -> float | tuple[FloatArray, int]:
        """Score one raw sample (0 unless it closes a downsampling block that is novel).

        When the sample needs an ART step after probation, returns ``(features, step)``
        instead: the caller batches those steps over series (:meth:`finish`).
        """
        if self.dmin is None:
            self.pending.append(value)
            if len(self.pending) < self.pp:
                return 0.0
            lo, hi = float(np.min(self.pending)), float(np.max(self.pending))
            margin = RANGE_MARGIN * (hi - lo)
            self.dmin, self.dmax = lo - margin, hi + margin
            held, self.pending = self.pending, []
            for v in held[:-1]:
                self._sample(v, defer=False)
            return self._sample(held[-1], defer=True)
        return self._sample(value, defer=True)

    def _sample(self, value: float, defer: bool) -> float | tuple[FloatArray, int]:
        self.block.pop(0)
        self.block.append(value)
        score: float | tuple[FloatArray, int] = 0.0
        if self.i % self.sstep == 0:
            score = self._features(self._downsample(), defer)
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

    def _features(self, ds: float, defer: bool) -> float | tuple[FloatArray, int]:
        self.f_window[:-1] = self.f_window[1:]
        self.f_window[-1] = ds
        f = np.zeros(2 * WINDOW)
        if self.dsi >= WINDOW:
            levels = self.f_window.tolist()
            f = np.array(_minmax(haar(_minmax(levels))) + levels)
        i = self.dsi
        if i > self.trend_window:
            return (f, i) if defer else self._detect(f, i)
        self.probation_features.append(f)
        if i == self.trend_window:
            feats = np.stack(self.probation_features, axis=1)
            self.probation_features = []
            rho = self._initial_rho(feats[:, WINDOW - 1 :])
            self.bank.rho_lb[self.k] = self.bank.rho_ub[self.k] = rho
            for j in range(feats.shape[1]):
                self._detect(feats[:, j], j + 1)
        return 0.0

    # ---------------------------------------------------------------- ART
    def _initial_rho(self, feats: FloatArray) -> float:
        """Mean match of the second half of an ART pass (rho 0.8) over the probation
        features, least typical first."""
        order = np.argsort(pair_similarity(feats).sum(axis=0), kind="stable")
        art = _ArtBank(1, 2 * WINDOW, feats.shape[1] + 1)
        art.rho_lb[0] = art.rho_ub[0] = INITIAL_RHO
        matches = [art.train_one(0, col)[1] for col in feats[:, order].T]
        return float(np.mean(matches[self.trend_window // 2 - 1 :]))

    def _detect(self, f: FloatArray, i: int) -> float:
        return self.finish(i, *self.bank.train_one(self.k, f, learning=i >= WINDOW))

    def finish(self, i: int, novel: bool, a: float, ae: float) -> float:
        """The rest of ARTime's step ``i`` after its ART step gave ``(novel, a, ae)``."""
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
        self.no_new_cat_count = 0 if novel else self.no_new_cat_count + 1
        self.match_sum += a
        self.match_count += 1
        self.sim_window[:-1] = self.sim_window[1:]
        self.sim_window[-1] = a
        self.sim_diff_window[:-1] = self.sim_diff_window[1:]
        self.sim_diff_window[-1] = self.bank.rho_ub[self.k] - a
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
        bank, k = self.bank, self.k
        lowest = float(self.sim_window.min())
        new_ub = min(RHO_UB_CAP, self.match_sum / self.match_count)
        prev_lb = float(bank.rho_lb[k])
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
        bank.rho_lb[k] = min(new_ub, new_lb)
        bank.rho_ub[k] = new_ub
        self.last_rho_update_i = i
        self.mask_after_cat = True

    def _confidence(self, sim: float, energy: float) -> float:
        sim = min(0.999, sim)
        ub = ((1 - sim) - (1 - self.bank.rho_ub[self.k])) / (1 - sim)
        lb = ((1 - sim) - (1 - self.bank.rho_lb[self.k])) / (1 - sim)
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
        self.bank = _ArtBank(n_series, 2 * WINDOW, max_categories)
        self.series = [
            _Series(
                self.bank,
                k,
                lo[k],
                hi[k],
                None if length[k] is None else int(length[k]),  # type: ignore[arg-type]
            )
            for k in range(n_series)
        ]

    def _update_score(self, values: FloatArray, ts_ns: IntArray, present: BoolArray) -> FloatArray:
        out = np.zeros(self.n_series)
        waiting: list[tuple[int, FloatArray, int]] = []
        column = values[:, 0].tolist()
        for k in np.flatnonzero(present).tolist():
            v = column[k]
            if math.isfinite(v):
                r = self.series[k].step(v)
                if isinstance(r, tuple):
                    waiting.append((k, *r))
                else:
                    out[k] = r
        if waiting:  # one batched ART step for every series that needs one now
            ks = np.array([w[0] for w in waiting])
            steps = [w[2] for w in waiting]
            novel, a, ae = self.bank.train(
                ks, np.stack([w[1] for w in waiting]), np.array(steps) >= WINDOW
            )
            for j, k in enumerate(ks.tolist()):
                out[k] = self.series[k].finish(steps[j], bool(novel[j]), float(a[j]), float(ae[j]))
        return out


def _per_series(x: object, n: int) -> list[float | None]:
    if x is None:
        return [None] * n
    arr = np.broadcast_to(np.asarray(x, np.float64), (n,))
    return [float(v) for v in arr]
