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
