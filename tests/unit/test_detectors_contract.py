"""One check-suite, run over every registered detector (STYLE.md item 9).

Output shape and range, strict streaming, state round-trip, determinism per seed, bounded
state, beating random on a synthetic spike/level-shift stream, missing data.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from accelpilot.detectors import base, calibrate, threshold
from accelpilot.detectors.base import Detector
from accelpilot.detectors.registry import detector_names, make_detector

N_SERIES = 6
N_STEPS = 400
T0_NS = 1_700_000_000 * 10**9
STEP_NS = 60 * 10**9
#: Series 0-2 share a host, 3-5 another: the peer detector needs siblings.
GROUPS = np.array([0, 0, 0, 1, 1, 1])
#: Small, fast settings for the slow-to-learn detectors.
FAST_KWARGS = {
    "forecaster": {"train_every": 50, "train_steps": 5, "min_train": 64, "reservoir": 512},
    "peers": {"groups": GROUPS},
    "ensemble": {"member_kwargs": {"peers": {"groups": GROUPS}}},
    "novelty": {"default_probation": 100, "refractory": 0.05},
}

# The torch forecaster takes ~70 s over the suite on 2 cores: marked slow (CI runs it).
ALL = [
    pytest.param(n, marks=pytest.mark.slow) if n == "forecaster" else n for n in detector_names()
]


def make(name: str, seed: int = 0) -> base.BatchDetector:
    return make_detector(name, N_SERIES, seed=seed, **FAST_KWARGS.get(name, {}))


def stream(n_steps: int = N_STEPS, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Daily-ish sine + noise per series; values ``(steps, series)``, ts ``(steps,)``."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_steps)[:, None]
    phase = rng.uniform(0, 2 * np.pi, N_SERIES)[None, :]
    values = 50 + 10 * np.sin(2 * np.pi * t / 96 + phase) + rng.normal(0, 1, (n_steps, N_SERIES))
    return values, T0_NS + STEP_NS * np.arange(n_steps, dtype=np.int64)


def run(det: base.BatchDetector, values: np.ndarray, ts: np.ndarray, present=None) -> np.ndarray:
    out = np.empty(values.shape[:2])
    for k in range(len(values)):
        p = None if present is None else present[k]
        out[k] = det.update_score(values[k], ts[k], p)
    return out


def test_registry_has_every_concept() -> None:
    assert set(detector_names()) >= {
        "robust",
        "covariance",
        "forecaster",
        "peers",
        "gaps",
        "ensemble",
    }


@pytest.mark.parametrize("name", ALL)
def test_follows_the_protocol_with_scores_in_unit_range(name: str) -> None:
    det = make(name)
    assert isinstance(det, Detector)
    assert det.name == name
    values, ts = stream()
    values[200, 1] = 500.0  # a spike must not escape [0, 1]
    scores = run(det, values, ts)
    assert scores.shape == (N_STEPS, N_SERIES)
    assert np.isfinite(scores).all()
    assert (scores >= 0).all() and (scores <= 1).all()


@pytest.mark.parametrize("name", ALL)
def test_accepts_metric_vectors(name: str) -> None:
    det = make(name)
    values, ts = stream(120)
    vec = np.stack([values, values * 2 + 1, -values], axis=2)  # (steps, series, 3 metrics)
    scores = run(det, vec, ts)
    assert scores.shape == (120, N_SERIES) and ((scores >= 0) & (scores <= 1)).all()


@pytest.mark.parametrize("name", ALL)
def test_strictly_streaming(name: str) -> None:
    """Scores up to t do not change when data after t changes."""
    values, ts = stream()
    cut = 250
    altered = values.copy()
    altered[cut:] = np.random.default_rng(9).normal(0, 100, altered[cut:].shape)
    altered[cut + 20 : cut + 40] = np.nan  # and a silence (the gap detector reads only that)
    a = run(make(name), values, ts)
    b = run(make(name), altered, ts)
    np.testing.assert_array_equal(a[:cut], b[:cut])
    assert not np.array_equal(a[cut:], b[cut:])


@pytest.mark.parametrize("name", ALL)
def test_state_round_trip_mid_stream(name: str) -> None:
    values, ts = stream()
    mid = 180
    whole = run(make(name), values, ts)
    det = make(name)
    first = run(det, values[:mid], ts[:mid])
    state = det.get_state()
    assert isinstance(state, bytes)
    restored = type(det).from_state(state)
    rest = run(restored, values[mid:], ts[mid:])
    np.testing.assert_array_equal(np.concatenate([first, rest]), whole)
    # The original, continued, agrees too (saving does not disturb it).
    np.testing.assert_array_equal(run(det, values[mid:], ts[mid:]), rest)


def test_state_of_another_class_is_refused() -> None:
    state = make("robust").get_state()
    cls = type(make("gaps"))
    with pytest.raises(ValueError, match="checkpoint"):
        cls.from_state(state)


@pytest.mark.parametrize("name", ALL)
def test_deterministic_per_seed(name: str) -> None:
    values, ts = stream()
    np.testing.assert_array_equal(
        run(make(name, seed=3), values, ts), run(make(name, seed=3), values, ts)
    )


@pytest.mark.parametrize("name", ALL)
def test_state_size_is_bounded(name: str) -> None:
    """The checkpoint after 4x as many samples is no bigger than a fixed slack."""
    values, ts = stream(2000)
    det = make(name)
    run(det, values[:500], ts[:500])
    early = base.state_size_bytes(det)
    run(det, values[500:], ts[500:])
    late = base.state_size_bytes(det)
    assert late <= early + 4096, (early, late)


def anomalous_stream(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Spikes and level shifts at random places; label windows of 10 samples after each."""
    values, ts = stream(600, seed)
    rng = np.random.default_rng(seed + 100)
    labels = np.zeros(values.shape, bool)
    for i in range(N_SERIES):
        for start in rng.choice(np.arange(150, 560, 60), 3, replace=False):
            if rng.random() < 0.5:
                values[start, i] += rng.choice([-1, 1]) * 40
            else:
                values[start:, i] += rng.choice([-1, 1]) * 30
            labels[start : start + 10, i] = True
    # The peer detector sees a device diverge from its siblings in the same window.
    return values, ts, labels, GROUPS


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability a labelled sample outscores an unlabelled one (ties count half)."""
    pos, neg = scores[labels], scores[~labels]
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def event_hit_rate(scores: np.ndarray, labels: np.ndarray, quantile: float = 0.99) -> float:
    """Share of labelled events whose best score beats the ``quantile`` of unlabelled scores."""
    cut = np.quantile(scores[~labels], quantile)
    hits, events = 0, 0
    for i in range(scores.shape[1]):
        lab = labels[:, i].astype(int)
        starts = np.flatnonzero(np.diff(np.concatenate([[0], lab])) == 1)
        for s in starts:
            events += 1
            hits += bool(scores[s : s + 10, i].max() > cut)
    return hits / events


@pytest.mark.parametrize("name", [n for n in ALL if n != "gaps"])
def test_beats_random_on_spikes_and_level_shifts(name: str) -> None:
    values, ts, labels, _ = anomalous_stream(seed=5)
    scores = run(make(name), values, ts)
    warm = slice(150, None)
    got = event_hit_rate(scores[warm], labels[warm])
    random = event_hit_rate(np.random.default_rng(0).random(scores[warm].shape), labels[warm])
    assert got >= max(0.6, random + 0.3), (got, random)


def test_gaps_beats_random_on_missing_samples() -> None:
    values, ts = stream(600)
    present = np.ones(values.shape, bool)
    labels = np.zeros(values.shape, bool)
    rng = np.random.default_rng(2)
    for i in range(N_SERIES):
        start = int(rng.integers(200, 500))
        present[start : start + 20, i] = False
        labels[start + 3 : start + 21, i] = True  # silent, and the sample that ends it
    scores = run(make("gaps"), values, ts, present)
    assert auc(scores[150:], labels[150:]) > 0.9
    assert scores[~labels & present][150:].max() == 0.0


@pytest.mark.parametrize("name", ALL)
def test_missing_samples_are_tolerated(name: str) -> None:
    values, ts = stream()
    values[100:110, 2] = np.nan
    present = np.ones(values.shape, bool)
    present[150:170, 4] = False
    scores = run(make(name), values, ts, present)
    assert np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()


def test_peer_detector_flags_the_diverging_sibling() -> None:
    rng = np.random.default_rng(4)
    common = 100 + np.cumsum(rng.normal(0, 1, 500))  # the job's load moves all siblings
    values = common[:, None] + rng.normal(0, 0.5, (500, N_SERIES))
    values[300:, 4] -= 8.0  # device 4 drops away from its host's siblings
    ts = T0_NS + STEP_NS * np.arange(500)
    scores = run(make("peers"), values, ts)
    assert scores[300, 4] == scores[300].max() > 0.4
    # Robust levels alone see the shared random walk as noise of the same size.


def test_inputs_are_checked() -> None:
    det = make("robust")
    with pytest.raises(ValueError, match="n_series"):
        det.update_score(np.zeros(N_SERIES + 1), 0)
    with pytest.raises(ValueError, match="present"):
        det.update_score(np.zeros(N_SERIES), 0, np.ones(2, bool))
    with pytest.raises(KeyError, match="unknown detector"):
        make_detector("nope", 2)


def test_doctests_pass() -> None:
    for module in (base, calibrate, threshold):
        assert doctest.testmod(module).failed == 0, module.__name__
