"""NAB regression guard: the default detector keeps the scores docs/detectors.md reports.

Runs ``evaluate_nab`` for the default detector over the shared NAB corpus (31 files, one
threshold optimized over them, normalized scores) and asserts each profile is at least the
reached value minus 0.5. Skipped where the corpus is not present.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from accelpilot.detectors.nab_runner import evaluate_nab
from accelpilot.detectors.registry import DEFAULT_DETECTOR

NAB_DIR = Path("/work/shared/data/nab")
#: Reached by the default detector (docs/detectors.md, "Round 2"); the goal (>= 74
#: standard, above ARTime 73.55 / 65.59 / 78.59 on every profile) is not reached.
REACHED = {"standard": 51.69, "reward_low_FP_rate": 27.06, "reward_low_FN_rate": 62.14}
SLACK = 0.5


@pytest.mark.skipif(
    not (NAB_DIR / "labels" / "combined_windows.json").exists(), reason="NAB corpus absent"
)
def test_default_detector_keeps_its_nab_scores() -> None:
    got = evaluate_nab(NAB_DIR, DEFAULT_DETECTOR)
    for profile, reached in REACHED.items():
        assert got[profile] >= reached - SLACK, (profile, got[profile], reached)
