"""NAB goal of issue #5, measured: the NAB detector beats ARTime on all three profiles.

Runs ``evaluate_nab`` over the shared NAB corpus (31 files, one threshold optimized over
them, normalized scores, NAB's protocol: each file's min/max and length are given to the
detectors that take them). Goal: standard >= 74 and above ARTime (73.55 / 65.59 / 78.59,
computed by the same scorer) on every profile. Also guards the scores reached by the NAB
default and the fleet default detector (docs/detectors.md). Skipped where the corpus is not present.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from accelpilot.detectors.nab_runner import evaluate_nab
from accelpilot.detectors.registry import DEFAULT_DETECTOR, NAB_DETECTOR

NAB_DIR = Path("/work/shared/data/nab")
ARTIME = {"standard": 73.55, "reward_low_FP_rate": 65.59, "reward_low_FN_rate": 78.59}
GOAL_STANDARD = 74.0
#: Reached by the fleet default detector (docs/detectors.md); far below the goal.
DEFAULT_REACHED = {"standard": 51.69, "reward_low_FP_rate": 27.06, "reward_low_FN_rate": 62.14}
#: Reached by the NAB default detector, `novelty` (docs/detectors.md, Rounds 4 and 7).
NAB_REACHED = {"standard": 73.78, "reward_low_FP_rate": 65.12, "reward_low_FN_rate": 78.75}
SLACK = 0.5

needs_corpus = pytest.mark.skipif(
    not (NAB_DIR / "labels" / "combined_windows.json").exists(), reason="NAB corpus absent"
)


@needs_corpus
@pytest.mark.xfail(
    strict=True,
    reason="issue #5 NAB goal not met yet: the NAB default (`novelty`, an original sparse "
    "novelty detector) scores 73.78 / 65.12 / 78.75 against ARTime's 73.55 / 65.59 / 78.59 "
    "and the goal's 74 standard (docs/detectors.md, Rounds 4-7)",
)
def test_nab_detector_meets_the_goal() -> None:
    got = evaluate_nab(NAB_DIR, NAB_DETECTOR)
    assert got["standard"] >= GOAL_STANDARD, got
    for profile, artime in ARTIME.items():
        assert got[profile] > artime, (profile, got[profile], artime)


@needs_corpus
def test_default_detector_keeps_its_nab_scores() -> None:
    got = evaluate_nab(NAB_DIR, DEFAULT_DETECTOR)
    for profile, reached in DEFAULT_REACHED.items():
        assert got[profile] >= reached - SLACK, (profile, got[profile], reached)


@needs_corpus
def test_nab_detector_keeps_its_nab_scores() -> None:
    got = evaluate_nab(NAB_DIR, NAB_DETECTOR)
    for profile, reached in NAB_REACHED.items():
        assert got[profile] >= reached - SLACK, (profile, got[profile], reached)
