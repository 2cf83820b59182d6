"""Events are acknowledged in arrival order per partition, whatever order they are released in."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from accelpilot.streams.in_order_acks import InOrderAcks


@dataclass(frozen=True, eq=False)
class _Message:
    tp: str
    offset: int


@dataclass(frozen=True, eq=False)
class _Event:
    message: _Message


def _events(tp: str, n: int) -> list[_Event]:
    return [_Event(_Message(tp, i)) for i in range(n)]


def test_a_later_event_waits_for_an_earlier_one() -> None:
    acks = InOrderAcks()
    a = _events("p0", 3)
    acks.arrived(a)
    assert acks.release([a[1], a[2]]) == []
    assert acks.release([a[0]]) == a
    assert acks.waiting == 0


def test_partitions_are_independent() -> None:
    acks = InOrderAcks()
    p0, p1 = _events("p0", 2), _events("p1", 2)
    acks.arrived([p0[0], p1[0], p0[1], p1[1]])
    assert acks.release([p1[0], p0[1]]) == [p1[0]]
    assert acks.release([p0[0]]) == p0


def test_events_from_before_a_reset_are_never_acknowledged() -> None:
    acks = InOrderAcks()
    old = _events("p0", 2)
    acks.arrived(old)
    acks.reset()
    new = _events("p0", 2)  # the same offsets, read again
    acks.arrived(new)
    assert acks.release([old[0], old[1]]) == []
    assert acks.release(new) == new


@given(st.lists(st.sampled_from(["p0", "p1", "p2"]), max_size=60), st.randoms())
def test_acks_are_the_released_prefix_in_order(tps: list[str], rnd: object) -> None:
    events = [_Event(_Message(tp, i)) for i, tp in enumerate(tps)]
    acks = InOrderAcks()
    acks.arrived(events)
    order = list(events)
    rnd.shuffle(order)  # type: ignore[attr-defined]
    acked: list[_Event] = []
    released: set[int] = set()
    for event in order:
        released.add(id(event))
        acked += acks.release([event])
        for tp in {"p0", "p1", "p2"}:
            mine = [e for e in events if e.message.tp == tp]
            got = [e for e in acked if e.message.tp == tp]
            # exactly the longest released prefix of the partition, in arrival order
            n = next((i for i, e in enumerate(mine) if id(e) not in released), len(mine))
            assert got == mine[:n]
    assert acks.waiting == 0
