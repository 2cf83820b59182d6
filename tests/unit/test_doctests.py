"""Docstring examples that run: every module with an example is checked here (STYLE.md #12)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "accelpilot.logs",
    "accelpilot.signing",
    "accelpilot.collectors.disk_buffer",
    "accelpilot.streams.aggregate_lines",
    "accelpilot.streams.aggregates",
    "accelpilot.streams.aggregates_bench",
    "accelpilot.streams.bench_pipeline",
    "accelpilot.streams.partitioner",
    "accelpilot.optimizer.generate",
    "accelpilot.optimizer.physics",
    "accelpilot.optimizer.policy",
    "accelpilot.optimizer.scenario",
    "accelpilot.detectors.base",
    "accelpilot.detectors.calibrate",
    "accelpilot.detectors.threshold",
    "accelpilot.detectors.failure_rules",
    "accelpilot.streams.alerting",
    "accelpilot.dashboards.subscriptions",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0, f"{name} has no examples any more: drop it from this list"
