"""Sparse novelty detector: one alarm at the onset of each new kind of behaviour.

Written for this project (issue #5) from general ideas: range scaling, windowed shape
features, online leader clustering with a bounded prototype memory, refractory suppression.

Per series, at every sample:

1. **Scale**: the value is mapped to ``[0, 1]`` over the series' range — the file's
   ``value_min`` / ``value_max`` when given (NAB's protocol, docs/detectors.md), else the
   running min/max of what the series has shown so far — and quantized to ``levels`` steps.
2. **Describe the recent past**: the last ``window`` scaled values are cut into ``blocks``
   equal blocks and each block averaged (a coarse picture of level and shape), plus the
   current value itself; ``d = blocks + 1`` numbers per metric.
3. **Compare with memory**: a bounded set of at most ``capacity`` prototypes learnt online
   (leader clustering). The root-mean-square distance to the nearest prototype, divided by
   ``radius``, is the *novelty*. If it is within the radius the vector joins that prototype
   (running mean, learning rate at least ``1 / max_weight``); otherwise it becomes a new
   prototype, replacing the least-recently-used one when memory is full. The radius widens
   for noisy series: it is at least ``noise_k`` x the series' EW mean RMS move of the
   feature vector from one sample to the next (weight ``noise_alpha``).
4. **Alarm sparsely**: during the probation period (``probation`` x the file length when
   ``n_samples`` is given, else ``default_probation`` samples) the detector only learns. After
   it, a sample is an alarm when its novelty exceeds 1 and the series has not alarmed in the
   last ``refractory`` x probation samples. An alarm scores ``e / (e + 1)`` of its excess
   ``e = novelty - 1 + novelty_offset`` times ``floor + (1 - floor) x robust``, where
   ``robust`` is the :class:`~accelpilot.detectors.robust.RobustZ` score of the same sample,
   so that changes large against the series' own spread rank first, divided by
   ``1 + rate / rate_ref`` (``rate``: how often the series has been novel lately). Every
   other sample scores 0.
5. **Compare with the previous period** (``season``): a shape memory cannot tell that an
   expected pattern is missing (a daily peak that does not come looks like a familiar
   night). At the end of probation the series' period ``T`` is estimated from the
   probation's autocorrelation (the highest peak, at a lag from ``window`` to half the
   probation, that is at least ``season_acf`` and rises ``season_dip`` above the lowest
   value at shorter lags; none: no period). From then on the *seasonal residual* (the mean
   absolute difference between the last ``season_block`` values and the same values ``T``
   samples earlier, in range units) divided by ``season_k`` x its largest value over the
   probation (at least ``season_floor``) is a second novelty, which can raise an alarm under
   the same rule; it is ignored where the residual around ``t - T`` was itself above
   ``season_echo`` (the period compared with was unusual: an anomaly's echo one period
   later, not a new one). Learning is unchanged.

Strictly streaming (each step scores with the state before the sample, then learns;
the period and the residual's scale come from the probation's samples only); memory per
series is fixed: ``capacity x d`` prototypes, a ``window`` ring and, with ``season``, two
rings of the probation's length (values per metric, and seasonal novelties).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from accelpilot.detectors.base import BatchDetector, BoolArray, FloatArray, IntArray
from accelpilot.detectors.robust import RobustZ


class NoveltyEpisodes(BatchDetector):
    """Leader-clustering novelty with one alarm per novel episode (module docstring).

    Args:
        value_min, value_max: per-series range (scalar or ``(n_series,)``); both or neither.
        n_samples: per-series length, sets the probation period (NAB's 15 %).
        window, blocks: samples described, and how many block means describe them.
        levels: quantization steps over the range (0 = none).
        radius: RMS distance (in range units) within which a vector joins a prototype.
        capacity: prototypes kept per series (least recently used replaced).
        max_weight: a prototype's learning rate never falls below ``1 / max_weight``.
        probation, default_probation: learning-only period (fraction of ``n_samples``, or
            samples when no length is given).
        refractory: silence after an alarm, as a fraction of the probation period.
        floor: weight of an alarm whose robust score is 0.
        novelty_offset: added to the excess before squashing (ranks alarms by novelty too).
        noise_k, noise_alpha: the radius is at least ``noise_k`` typical sample-to-sample
            moves of the feature vector (EW mean with weight ``noise_alpha``; 0 = off).
        rate_alpha, rate_ref: an alarm's score is divided by ``1 + rate / rate_ref``, ``rate``
            the series' EW rate (weight ``rate_alpha``) of novel samples: a series that is
            always novel (noise wider than the radius) alarms less (0 = off).
        season: compare with the previous period (step 5 of the module docstring).
        season_acf, season_dip: the autocorrelation a period needs, and its rise over the
            lowest value at shorter lags.
        season_block, season_k, season_floor, season_echo: the residual's averaging length
            (samples), its alarm level in multiples of the probation's largest residual (that
            largest at least ``season_floor`` range units), and the past seasonal novelty
            above which a residual is taken for an echo.
    """

    name = "novelty"
    series_independent = True
    takes_file_range = True

    def __init__(
        self,
        n_series: int,
        value_min: npt.ArrayLike | None = None,
        value_max: npt.ArrayLike | None = None,
        n_samples: npt.ArrayLike | None = None,
        window: int = 32,
        blocks: int = 4,
        levels: int = 0,
        radius: float = 0.05,
        capacity: int = 128,
        max_weight: float = 50.0,
        probation: float = 0.15,
        default_probation: int = 600,
        refractory: float = 0.2,
        floor: float = 0.5,
        novelty_offset: float = 0.5,
        rate_alpha: float = 0.001,
        rate_ref: float = 0.01,
        noise_k: float = 2.0,
        noise_alpha: float = 0.01,
        season: bool = True,
        season_acf: float = 0.6,
        season_dip: float = 0.3,
        season_block: int = 8,
        season_k: float = 3.0,
        season_floor: float = 0.01,
        season_echo: float = 0.5,
        seed: int = 0,
    ) -> None:
        super().__init__(n_series)
        if (value_min is None) != (value_max is None):
            raise ValueError("give both value_min and value_max, or neither")
        if window < 1 or blocks < 1 or window % blocks:
            raise ValueError(f"window ({window}) must be a positive multiple of blocks ({blocks})")
        if radius <= 0 or capacity < 1:
            raise ValueError("radius must be > 0 and capacity >= 1")
        if season and (season_block < 1 or season_k <= 0 or season_floor <= 0):
            raise ValueError("season_block must be >= 1, season_k and season_floor > 0")
        self.fixed_range = value_min is not None
        shape = (n_series,)
        self.lo = np.broadcast_to(
            np.asarray(value_min if self.fixed_range else np.inf, float), shape
        ).copy()
        self.hi = np.broadcast_to(
            np.asarray(value_max if self.fixed_range else -np.inf, float), shape
        ).copy()
        if n_samples is None:
            self.probation_n = np.full(shape, float(default_probation))
        else:
            self.probation_n = np.floor(
                probation * np.broadcast_to(np.asarray(n_samples, float), shape)
            )
        self.refractory_n = np.maximum(refractory * self.probation_n, 1.0)
        self.window, self.blocks, self.levels = int(window), int(blocks), int(levels)
        self.radius, self.capacity = float(radius), int(capacity)
        self.max_weight = float(max_weight)
        self.floor, self.novelty_offset = float(floor), float(novelty_offset)
        self.rate_alpha, self.rate_ref = float(rate_alpha), float(rate_ref)
        self.novel_rate = np.zeros(shape)
        self.noise_k = float(noise_k)
        self.noise_alpha = float(noise_alpha)
        self.noise = np.zeros(shape)
        self.prev_feat = np.zeros((n_series, 0))
        self.count = np.zeros(shape)
        self.last_alarm = np.full(shape, -np.inf)
        self.robust = RobustZ(n_series, seed=seed)
        # Sized on the first call (number of metrics).
        self.ring = np.zeros((n_series, 0, 0))
        self.protos = np.zeros((n_series, capacity, 0))
        self.weight = np.zeros((n_series, capacity))
        self.used = np.full((n_series, capacity), -1.0)
        self.season = bool(season)
        self.season_acf, self.season_dip = float(season_acf), float(season_dip)
        self.season_block, self.season_k = int(season_block), float(season_k)
        self.season_floor, self.season_echo = float(season_floor), float(season_echo)
        # Rings as long as the longest probation (+1: the sample that ends it is kept too).
        self.season_len = int(self.probation_n.max(initial=0)) + 1 if self.season else 0
        self.history = np.zeros((n_series, 0, self.season_len))  # sized with the metrics
        self.season_novelty = np.zeros((n_series, self.season_len))
        self.period = np.zeros(shape, np.int64)  # 0: no period (yet)
        self.season_ref = np.zeros(shape)

    def _learn_range(self, values: FloatArray, present: BoolArray) -> None:
        if self.fixed_range:
            return
        v = np.where(present[:, None], values, np.nan)
        with np.errstate(invalid="ignore"):
            self.lo = np.fmin(self.lo, np.nanmin(v, axis=1, initial=np.inf))
            self.hi = np.fmax(self.hi, np.nanmax(v, axis=1, initial=-np.inf))

    def _features(self) -> FloatArray:
        """Block means and last value of the ring, scaled to the current range."""
        n, f, w = self.ring.shape
        span = np.where(self.hi > self.lo, self.hi - self.lo, 1.0)
        lo = np.where(np.isfinite(self.lo), self.lo, 0.0)
        x = (self.ring - lo[:, None, None]) / span[:, None, None]
        if self.levels > 0:
            x = np.round(x * self.levels) / self.levels
        means = x.reshape(n, f, self.blocks, w // self.blocks).mean(axis=3)
        return np.concatenate([means, x[:, :, -1:]], axis=2).reshape(n, -1)

    def _update_score(self, values: FloatArray, ts_ns: IntArray, present: BoolArray) -> FloatArray:
        robust = self.robust._update_score(values, ts_ns, present)
        n, f = values.shape
        if self.ring.shape[1] != f:
            self.ring = np.zeros((n, f, self.window))
            self.protos = np.zeros((n, self.capacity, f * (self.blocks + 1)))
            self.history = np.zeros((n, f, self.season_len))
        self._learn_range(values, present)
        # A metric missing from a present sample repeats its last value (the range's low
        # end before the first one).
        lo = np.where(np.isfinite(self.lo), self.lo, 0.0)
        x = np.where(
            np.isnan(values),
            np.where(self.count[:, None] > 0, self.ring[:, :, -1], lo[:, None]),
            values,
        )
        first = (self.count == 0) & present
        filled = np.where(first[:, None, None], x[:, :, None], self.ring)  # start flat
        shifted = np.concatenate([filled[:, :, 1:], x[:, :, None]], axis=2)
        self.ring = np.where(present[:, None, None], shifted, self.ring)
        feat = self._features()

        # Nearest prototype (RMS distance); empty slots are infinitely far.
        diff = self.protos - feat[:, None, :]
        dist = np.sqrt((diff * diff).mean(axis=2))
        dist = np.where(self.weight > 0, dist, np.inf)
        nearest = dist.argmin(axis=1)
        rows = np.arange(n)
        radius = self.radius
        if self.noise_k > 0:
            if self.prev_feat.shape != feat.shape:
                self.prev_feat = feat.copy()
            moved = np.sqrt(((feat - self.prev_feat) ** 2).mean(axis=1))
            a = np.maximum(self.noise_alpha, 1.0 / (self.count + 1.0))
            self.noise = np.where(present, self.noise + a * (moved - self.noise), self.noise)
            self.prev_feat = np.where(present[:, None], feat, self.prev_feat)
            radius = np.maximum(self.radius, self.noise_k * self.noise)
        novelty = dist[rows, nearest] / radius  # inf while memory is empty

        # Score with the memory as it was, then learn.
        step = self.count
        novel = present & (novelty > 1.0)
        if self.season:
            novelty = np.maximum(novelty, self._seasonal(x, present))
        alarm = (
            present
            & (novelty > 1.0)
            & (step >= self.probation_n)
            & (step - self.last_alarm > self.refractory_n)
            & np.isfinite(novelty)
        )
        excess = np.where(alarm, novelty - 1.0 + self.novelty_offset, 0.0)
        score = np.where(
            alarm, excess / (excess + 1.0) * (self.floor + (1 - self.floor) * robust), 0.0
        )
        if self.rate_alpha > 0:
            score = score / (1.0 + self.novel_rate / self.rate_ref)
            a = np.maximum(self.rate_alpha, 1.0 / (step + 1.0))
            self.novel_rate = np.where(
                present, self.novel_rate + a * (novel - self.novel_rate), self.novel_rate
            )
        self.last_alarm = np.where(alarm, step, self.last_alarm)

        join = present & ~novel
        rate = 1.0 / np.minimum(self.weight[rows, nearest] + 1.0, self.max_weight)
        p = self.protos[rows, nearest]
        self.protos[rows, nearest] = np.where(join[:, None], p + rate[:, None] * (feat - p), p)
        self.weight[rows, nearest] += join
        self.used[rows, nearest] = np.where(join, step, self.used[rows, nearest])
        slot = self.used.argmin(axis=1)  # least recently used (empty slots: -1)
        self.protos[rows, slot] = np.where(novel[:, None], feat, self.protos[rows, slot])
        self.weight[rows, slot] = np.where(novel, 1.0, self.weight[rows, slot])
        self.used[rows, slot] = np.where(novel, step, self.used[rows, slot])
        self.count = self.count + present
        return np.clip(score, 0.0, 1.0)

    def _span(self) -> FloatArray:
        return np.where(self.hi > self.lo, self.hi - self.lo, 1.0)

    def _seasonal(self, x: FloatArray, present: BoolArray) -> FloatArray:
        """Step 5 of the module docstring: the seasonal novelty of this sample (0 where the
        series has no period or is still in probation), after recording the sample."""
        n, length, block = len(x), self.season_len, self.season_block
        step = self.count.astype(np.int64)
        rows = np.flatnonzero(present)
        self.history[rows, :, step[rows] % length] = x[rows]
        for i in np.flatnonzero(present & (step == self.probation_n)):
            self._estimate_period(int(i), int(step[i]) + 1)
        out = np.zeros(n)
        rows = np.flatnonzero(present & (self.period > 0) & (step > self.probation_n))
        if rows.size == 0:
            return out
        t, period = step[rows], self.period[rows]
        residual = np.zeros(rows.size)
        for j in range(block):
            now = self.history[rows, :, (t - j) % length]
            before = self.history[rows, :, (t - j - period) % length]
            residual += np.abs(now - before).mean(axis=1)
        residual /= block * self._span()[rows]
        level = self.season_k * np.maximum(self.season_ref[rows], self.season_floor)
        seasonal = residual / level
        self.season_novelty[rows, t % length] = seasonal
        # The residuals around t - T: one above season_echo means the period compared with was
        # unusual itself. Before probation's end there are none (zeros).
        around = np.arange(-block, block + 1)
        past = (t - period)[:, None] + around[None, :]
        valid = past > self.probation_n[rows, None]
        echo = np.where(valid, self.season_novelty[rows[:, None], past % length], 0.0).max(axis=1)
        out[rows] = np.where(echo > self.season_echo, 0.0, seasonal)
        return out

    def _estimate_period(self, i: int, n_seen: int) -> None:
        """The period of series ``i`` from its first ``n_seen`` samples (its probation)."""
        h = self.history[i, :, :n_seen] / self._span()[i]
        h = h - h.mean(axis=1, keepdims=True)
        power = (h * h).sum(axis=1)
        keep = power > 0
        if not keep.any() or n_seen < 2 * self.window + 2:
            return
        size = 2 * n_seen  # zero-padded: the circular correlation is the linear one
        spectrum = np.fft.rfft(h[keep], size, axis=1)
        corr = np.fft.irfft(spectrum * spectrum.conj(), size, axis=1)[:, :n_seen]
        lags = np.arange(n_seen)
        # Autocorrelation per metric, corrected for the shrinking overlap, then averaged.
        acf = (corr / power[keep, None] * n_seen / np.maximum(n_seen - lags, 1)).mean(axis=0)
        best, period = 0.0, 0
        lowest = np.inf
        for lag in range(self.window, n_seen // 2):
            lowest = min(lowest, acf[lag])
            if acf[lag] > best and acf[lag] - lowest >= self.season_dip:
                best, period = float(acf[lag]), lag
        if period == 0 or best < self.season_acf:
            return
        block = self.season_block
        diff = np.abs(h[:, period:] - h[:, :-period]).mean(axis=0)
        if diff.size < block:
            return
        blocks = np.convolve(diff, np.ones(block) / block, mode="valid")
        self.period[i], self.season_ref[i] = period, float(blocks.max())
