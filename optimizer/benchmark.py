"""Long evaluations (not unit tests): the bundled scenarios, unseen generated ones, and the
runtime of a one-hour ten-device fleet. ``python -m accelpilot.optimizer.benchmark``."""

from __future__ import annotations

import time

from accelpilot.optimizer.evaluate import evaluate
from accelpilot.optimizer.generate import generate
from accelpilot.optimizer.scenario import bundled_scenario_names, load_bundled_scenario

UNSEEN_SEEDS = (9001, 9002, 9003)  # training uses seeds 0..399 (train seed 0)


def runtime_one_hour_ten_devices(seed: int = 4711) -> float:
    sc = generate(seed, duration_s=3600, n_devices=10)
    t0 = time.perf_counter()
    report = evaluate(sc)
    wall = time.perf_counter() - t0
    print(report.to_text())
    return wall


def main() -> None:  # pragma: no cover
    for name in bundled_scenario_names():
        print(evaluate(load_bundled_scenario(name)).to_text(), flush=True)
    for seed in UNSEEN_SEEDS:
        print(evaluate(generate(seed, duration_s=1800)).to_text(), flush=True)
    print(f"one-hour ten-device runtime: {runtime_one_hour_ten_devices():.1f} s", flush=True)


if __name__ == "__main__":  # pragma: no cover
    main()
