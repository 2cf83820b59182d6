"""The worker's garbage-collector settings: fewer young collections, startup objects frozen.

CPython collects its youngest generation every 700 net container allocations (lists, dicts,
structs), and every tenth young collection also scans the middle generation. The worker
allocates a few hundred thousand such objects a second (decoded samples, window rows,
statistics, payloads, lines), so the collector ran thousands of times a second; on the bench's
pure stages it cost 15-20 % of their CPU (docs/streams.md, Round 7). :func:`tune` raises the
young threshold to :data:`YOUNG_OBJECTS` (a few MB of garbage at most waits a little longer;
cycles are still collected) and freezes what exists after start-up (modules, the faust app)
out of every later collection.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

#: Net container allocations between two young collections (CPython's default: 700).
YOUNG_OBJECTS = 20_000


def tune() -> None:
    """Apply the worker's settings to this process (once, after start-up)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_OBJECTS, older, oldest)


@contextmanager
def tuned() -> Iterator[None]:
    """The worker's young threshold for a block of this process (the bench's in-process floor),
    the previous one restored after it."""
    before = gc.get_threshold()
    gc.set_threshold(YOUNG_OBJECTS, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
