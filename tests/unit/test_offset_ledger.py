"""The consumer commits each partition's done prefix only, whatever order records finish in."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from accelpilot.streams.offset_ledger import OffsetLedger


def test_a_later_record_waits_for_an_earlier_one() -> None:
    ledger = OffsetLedger()
    a, b, c = (ledger.arrived(0, o) for o in (10, 11, 12))
    ledger.release([c])
    assert ledger.to_commit() == {}
    ledger.release([a])
    assert ledger.to_commit() == {0: 11}  # 11 is not done: the commit stops before it
    ledger.release([b])
    assert ledger.to_commit() == {0: 13}


def test_partitions_are_independent() -> None:
    ledger = OffsetLedger()
    a0 = ledger.arrived(0, 0)
    ledger.arrived(1, 0)
    ledger.release([a0])
    assert ledger.to_commit() == {0: 1}


def test_holes_in_offsets_are_crossed_by_arrival_order() -> None:
    """Offsets may skip (transaction markers, compaction): the next offset to commit is the one
    after the last record of the prefix, not a count."""
    ledger = OffsetLedger()
    tokens = [ledger.arrived(0, o) for o in (3, 7, 8)]
    ledger.release(tokens)
    assert ledger.to_commit() == {0: 9}


def test_committed_offsets_are_not_committed_again() -> None:
    ledger = OffsetLedger()
    ledger.release([ledger.arrived(0, 0)])
    ledger.committed(ledger.to_commit())
    assert ledger.to_commit() == {}
    ledger.release([ledger.arrived(0, 1)])
    assert ledger.to_commit() == {0: 2}


def test_tokens_of_an_earlier_generation_move_nothing() -> None:
    """A batch still in flight at a rebalance lands later: its records are read again from the
    committed offset, so its release must not move a commit of the new generation."""
    ledger = OffsetLedger()
    old = [ledger.arrived(0, o) for o in range(5)]
    ledger.reset()
    assert ledger.waiting == 0
    new = ledger.arrived(0, 0)  # read again from the committed offset
    ledger.release(old)
    assert ledger.to_commit() == {}
    ledger.release([new])
    assert ledger.to_commit() == {0: 1}


@given(
    n=st.integers(1, 40),
    order=st.randoms(use_true_random=False),
    partitions=st.integers(1, 3),
)
def test_the_commit_is_always_the_end_of_the_longest_done_prefix(
    n: int, order: object, partitions: int
) -> None:
    ledger = OffsetLedger()
    tokens = [ledger.arrived(i % partitions, 100 + i) for i in range(n)]
    shuffled = list(tokens)
    order.shuffle(shuffled)  # type: ignore[attr-defined]
    done: set[int] = set()
    for token in shuffled:
        ledger.release([token])
        done.add(token[2])
        for p in range(partitions):
            mine = [t[2] for t in tokens if t[1] == p]
            prefix = 0
            while prefix < len(mine) and mine[prefix] in done:
                prefix += 1
            want = mine[prefix - 1] + 1 if prefix else None
            assert ledger.to_commit().get(p) == want
    assert ledger.waiting == 0
