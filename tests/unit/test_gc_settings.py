"""streams/gc_settings.py: the worker's collector settings, and the bench's block of them."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from accelpilot.streams import gc_settings


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_tune_raises_the_young_threshold_and_freezes_what_exists(restored_gc: None) -> None:
    older = gc.get_threshold()[1:]
    gc_settings.tune()
    assert gc.get_threshold() == (gc_settings.YOUNG_OBJECTS, *older)
    assert gc.get_freeze_count() > 1000  # the modules and objects of this test process
    # Cycles made afterwards are still collected.
    a: list[object] = []
    a.append(a)
    del a
    assert gc.collect() >= 1


def test_tuned_restores_the_threshold_after_its_block(restored_gc: None) -> None:
    gc.set_threshold(700, 10, 10)
    with gc_settings.tuned():
        assert gc.get_threshold() == (gc_settings.YOUNG_OBJECTS, 10, 10)
    assert gc.get_threshold() == (700, 10, 10)
    with pytest.raises(RuntimeError), gc_settings.tuned():
        raise RuntimeError
    assert gc.get_threshold() == (700, 10, 10)
