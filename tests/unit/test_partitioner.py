"""streams/partitioner.py: the default partitioner's choice, remembered per key."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from accelpilot.config import load_settings
from accelpilot.streams.app import make_app
from accelpilot.streams.partitioner import CachingPartitioner

default = DefaultPartitioner()


@given(
    keys=st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=30),
    n_partitions=st.integers(1, 64),
)
def test_every_key_goes_where_the_default_sends_it(keys: list[bytes], n_partitions: int) -> None:
    p = CachingPartitioner(max_keys=7)  # small: the memory is dropped and refilled on the way
    parts = list(range(n_partitions))
    for key in keys * 3:
        assert p(key, parts, parts) == default(key, parts, parts)


def test_a_topic_with_more_partitions_is_asked_again() -> None:
    p = CachingPartitioner()
    found = {n: p(b"h00042", list(range(n)), list(range(n))) for n in (1, 3, 8, 12)}
    assert found == {n: default(b"h00042", list(range(n)), []) for n in (1, 3, 8, 12)}


def test_an_unkeyed_message_goes_to_an_available_partition() -> None:
    p = CachingPartitioner()
    assert {p(None, [0, 1, 2, 3], [2]) for _ in range(20)} == {2}
    assert len(p._known) == 0


def test_the_worker_producer_uses_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = load_settings()
    settings = settings.model_copy(
        update={"worker": settings.worker.model_copy(update={"data_dir": tmp_path})}
    )
    assert isinstance(make_app(settings).conf.producer_partitioner, CachingPartitioner)
