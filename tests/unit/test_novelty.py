"""The sparse novelty detector's own behaviour (detectors/novelty.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from accelpilot.detectors import nab
from accelpilot.detectors.nab_runner import read_series, score_series
from accelpilot.detectors.novelty import NoveltyEpisodes

T0_NS = 1_700_000_000 * 10**9


def run(det: NoveltyEpisodes, values: np.ndarray) -> np.ndarray:
    return np.array([det.update_score(values[k], T0_NS + k) for k in range(len(values))])


def det_window() -> int:
    return NoveltyEpisodes(1).window


def square_wave(n: int) -> np.ndarray:
    return np.where((np.arange(n) // 20) % 2 == 0, 0.0, 1.0)


def test_silent_in_probation_and_on_familiar_behaviour() -> None:
    values = square_wave(1000)[:, None]
    scores = run(NoveltyEpisodes(1, value_min=0.0, value_max=2.0, n_samples=1000), values)
    assert (scores == 0).all()


def test_one_alarm_at_the_onset_of_a_new_behaviour() -> None:
    values = square_wave(1000)
    values[700:] = 2.0  # a new level, held: one episode
    scores = run(NoveltyEpisodes(1, value_min=0.0, value_max=2.0, n_samples=1000), values[:, None])
    alarms = np.flatnonzero(scores > 0)
    assert alarms[0] == 700 and 0 < scores[700] <= 1
    # Once the window holds only the new level, it is familiar: silence.
    assert alarms.max() < 700 + det_window()


def test_learns_its_range_without_one() -> None:
    values = 0.5 + 0.5 * np.sin(2 * np.pi * np.arange(1000) / 50)
    values[700] = 3.0  # a spike outside everything seen
    det = NoveltyEpisodes(1, default_probation=150)
    scores = run(det, values[:, None])
    assert np.flatnonzero(scores > 0)[0] == 700
    assert det.lo[0] == pytest.approx(0.0, abs=1e-3) and det.hi[0] == 3.0


def test_series_are_independent() -> None:
    a = square_wave(800)
    b = a.copy()
    b[600:] = 2.0
    both = run(NoveltyEpisodes(2, [0.0, 0.0], [2.0, 2.0], [800, 800]), np.stack([a, b], 1))
    alone = run(NoveltyEpisodes(1, 0.0, 2.0, 800), a[:, None])
    np.testing.assert_array_equal(both[:, :1], alone)
    assert both[:, 1].max() > 0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="both"):
        NoveltyEpisodes(1, value_min=0.0)
    with pytest.raises(ValueError, match="multiple"):
        NoveltyEpisodes(1, window=10, blocks=4)


NAB_DIR = Path("/work/shared/data/nab")


@pytest.mark.skipif(not (NAB_DIR / "labels").exists(), reason="NAB corpus absent")
def test_nab_files_batched_score_as_alone() -> None:
    """The NAB runner batches files with their own ranges; each file scores as if alone."""
    paths = nab.list_data_files(NAB_DIR)[10:13]
    series = [read_series(NAB_DIR / p) for p in paths]
    batched = score_series(series, "novelty")
    for s, b in zip(series, batched, strict=True):
        np.testing.assert_array_equal(b, score_series([s], "novelty")[0])
    assert all((b > 0).any() for b in batched)


def daily(n: int, period: int = 100, seed: int = 0) -> np.ndarray:
    """A peak of 1 for a fifth of every period over a base of 0, with a little noise."""
    rng = np.random.default_rng(seed)
    peak = ((np.arange(n) % period) >= 40) & ((np.arange(n) % period) < 60)
    return peak.astype(float) + rng.normal(0.0, 0.01, n)


def test_a_missing_peak_alarms_through_the_previous_period() -> None:
    values = daily(2000)
    values[1540:1560] = values[1440:1460] - 1.0  # the 16th peak does not come
    kw = dict(value_min=values.min(), value_max=values.max(), n_samples=2000)
    seasonal = NoveltyEpisodes(1, **kw)
    scores = run(seasonal, values[:, None])
    assert seasonal.period[0] == 100
    alarms = np.flatnonzero(scores > 0)
    assert any(1540 <= a < 1560 for a in alarms), alarms
    # One period later the peak is back: the residual against the missing one is an echo.
    assert not any(1600 <= a < 1700 for a in alarms), alarms
    # The shape memory alone has seen a flat stretch every night: silent on the missing peak.
    plain = run(NoveltyEpisodes(1, **kw, season=False), values[:, None])
    assert not (plain[1540:1560] > 0).any()


def test_no_period_without_a_rhythm() -> None:
    rng = np.random.default_rng(1)
    for values in (rng.normal(0, 1, 1500), np.cumsum(rng.normal(0, 1, 1500))):
        det = NoveltyEpisodes(1, value_min=values.min(), value_max=values.max(), n_samples=1500)
        run(det, values[:, None])
        assert det.period[0] == 0


def test_seasonal_state_round_trips_mid_stream() -> None:
    values = daily(1600)
    values[1340:1360] = 0.0  # a missing peak after the state is restored
    kw = dict(value_min=values.min(), value_max=values.max(), n_samples=1600)
    whole = run(NoveltyEpisodes(1, **kw), values[:, None])
    first = NoveltyEpisodes(1, **kw)
    head = run(first, values[:1000, None])
    rest = run(NoveltyEpisodes.from_state(first.get_state()), values[1000:, None])
    np.testing.assert_array_equal(np.concatenate([head, rest]), whole)
    assert (whole[1340:1360] > 0).any()
