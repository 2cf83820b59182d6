"""The console's pure parts: the efficiency score, the advisor, token parsing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from accelpilot.console.advisor import Advisor, Savings, recommendation_key
from accelpilot.console.auth import Auth, is_loopback, parse_tokens
from accelpilot.console.errors import NotFoundError
from accelpilot.console.score import ROLLING_TICKS, EfficiencyScore, ShadowBaseline
from accelpilot.errors import ConfigError
from accelpilot.optimizer.actions import Intent
from accelpilot.optimizer.scenario import load_bundled_scenario
from accelpilot.optimizer.simulator import FleetSimulator


def test_savings_count_only_within_the_slo_and_streaks_break() -> None:
    s = EfficiencyScore(tick_s=1.0)
    for t in range(59):
        assert s.add(t, 900.0, 1000.0, work=1, baseline_work=1, slo_ok=True) in ([], ["first-wh"])
    assert s.streak_ticks == 59 and "streak-60" not in s.earned
    assert s.add(59, 900.0, 1000.0, work=1, baseline_work=1, slo_ok=True) == [
        "streak-60",
        "ten-percent",
    ]
    assert s.earned["streak-60"] == 59
    # A tick that misses the SLO scores nothing and breaks the streak, however much it saves.
    points = s.saved_within_slo_j
    s.add(60, 0.0, 1000.0, work=1, baseline_work=1, slo_ok=False)
    assert s.saved_within_slo_j == points and s.streak_ticks == 0 and s.best_streak_ticks == 60
    assert s.rolling_saved_fraction() is None  # a violation in the window
    assert s.saved_j == pytest.approx(60 * 100 + 1000)
    assert s.points == round(60 * 100 / 3600)
    # Saving less than 1% does not extend a streak.
    s.add(61, 995.0, 1000.0, work=1, baseline_work=1, slo_ok=True)
    assert s.streak_ticks == 0


@given(st.lists(st.tuples(st.floats(0, 1e4), st.floats(0, 1e4), st.booleans()), max_size=200))
def test_score_totals_are_sums(ticks: list[tuple[float, float, bool]]) -> None:
    s = EfficiencyScore(tick_s=1.0)
    for t, (e, b, ok) in enumerate(ticks):
        s.add(t, e, b, work=1, baseline_work=1, slo_ok=ok)
    assert s.saved_j == pytest.approx(sum(b - e for e, b, _ in ticks), abs=1e-6)
    assert s.saved_within_slo_j == pytest.approx(sum(b - e for e, b, ok in ticks if ok), abs=1e-6)
    assert s.best_streak_ticks >= s.streak_ticks
    assert s.slo_violation_ticks == sum(not ok for _, _, ok in ticks)
    d = s.to_dict()
    assert all(isinstance(b["earned"], bool) for b in d["badges"])  # type: ignore[attr-defined]
    if len(ticks) >= ROLLING_TICKS and all(ok for *_, ok in ticks[-ROLLING_TICKS:]):
        base = sum(b for _, b, _ in ticks[-ROLLING_TICKS:])
        if base > 0:
            assert s.rolling_saved_fraction() is not None


def test_shadow_baseline_is_the_max_policy_on_the_same_seed() -> None:
    sc = load_bundled_scenario("demo-fleet")
    shadow = ShadowBaseline(sc, sc.seed, 0)
    plain = FleetSimulator(sc, seed=sc.seed)
    for _ in range(30):
        mine = shadow.step(sc.seed)
        theirs = plain.step(plain.tdp_w, plain.even_weights, None).truth
        assert mine.energy_j.tolist() == theirs.energy_j.tolist()
    # A new seed (the demo's fleet wrapped around) restarts the baseline.
    shadow.step(sc.seed + 1)
    assert shadow.sim.seed == sc.seed + 1 and shadow.sim.tick == 1


def cap(device: str, cap_w: float) -> Intent:
    return Intent(device.split("/")[0], "set_power_cap", 0, device, cap_w=cap_w)


def test_advisor_keeps_ids_refreshes_targets_and_hides_dismissed() -> None:
    adv = Advisor()
    none = Savings(None, "test")
    adv.update([cap("h/gpu0", 500), cap("h/gpu1", 400)], 1, lambda it: none)
    rid = recommendation_key(cap("h/gpu0", 0))
    assert set(adv.open) == {rid, recommendation_key(cap("h/gpu1", 0))}
    adv.update([cap("h/gpu0", 480)], 2, lambda it: Savings(12.0, "model"))
    assert list(adv.open) == [rid]
    assert adv.open[rid].intent.cap_w == 480 and adv.open[rid].first_tick == 1
    assert adv.open[rid].to_dict()["expected_savings_w"] == 12.0
    adv.dismiss(rid)
    adv.update([cap("h/gpu0", 475)], 3, lambda it: none)
    assert adv.open == {}  # moved less than 10 W: still dismissed
    adv.update([cap("h/gpu0", 400)], 4, lambda it: none)
    assert list(adv.open) == [rid]  # the optimizer has something new to say
    adv.accepted(rid)
    with pytest.raises(NotFoundError, match="not open"):
        adv.get(rid)
    assert adv.accepted_total == 1 and adv.dismissed_total == 1


def test_tokens_parse_and_exposed_binds_need_them() -> None:
    toks = parse_tokens(" alice:operator:abcdefgh , bob:viewer:12345678:with:colons ")
    assert toks["abcdefgh"].name == "alice" and toks["abcdefgh"].can_act
    assert not toks["12345678:with:colons"].can_act
    for bad in (
        "alice:admin:abcdefgh",
        "alice:operator",
        "alice:operator:short",
        ":viewer:abcdefgh",
    ):
        with pytest.raises(ConfigError):
            parse_tokens(bad)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    with pytest.raises(ConfigError, match="ACCELPILOT_CONSOLE__TOKENS"):
        Auth.for_bind("0.0.0.0", "")
    auth = Auth.for_bind("0.0.0.0", "alice:operator:abcdefgh")
    assert auth.principal(None) is None and auth.principal("Bearer nope") is None
    assert auth.principal("Bearer abcdefgh") == toks["abcdefgh"]
    assert Auth.for_bind("127.0.0.1", "").principal(None).name == "local"  # type: ignore[union-attr]
