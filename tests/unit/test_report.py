"""The evaluation report: every policy on the same scenario and seed, the spec's columns."""

from __future__ import annotations

import json

from accelpilot.optimizer.evaluate import evaluate, evaluate_cli
from accelpilot.optimizer.generate import generate, to_json_dict


def test_report_columns_and_savings(tmp_path) -> None:
    sc = generate(5, duration_s=120)
    path = tmp_path / "s.json"
    path.write_text(json.dumps(to_json_dict(sc)))
    rep = evaluate(path, ["max", "static", "oracle"], seed=9)
    by = rep.by_policy()
    assert rep.seed == 9 and rep.ticks == 120 and rep.oracle_method == "exact"
    assert by["max"].savings_vs_oracle == 0.0 and by["oracle"].savings_vs_oracle == 1.0
    assert by["oracle"].j_per_unit <= by["max"].j_per_unit
    assert by["max"].actions == 0
    r = by["static"]
    assert r.j_per_unit == r.energy_j / r.work_units
    data = json.loads(rep.to_json())
    assert {x["policy"] for x in data["results"]} == {"max", "static", "oracle"}
    assert set(data["results"][0]) >= {
        "energy_j",
        "work_units",
        "j_per_unit",
        "slo_violation_fraction",
        "actions",
        "savings_vs_oracle",
    }
    text = evaluate_cli(path, "max,oracle")
    assert "oracle" in text and "savings" in text
