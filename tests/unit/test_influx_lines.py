"""sample_lines: exact line protocol, the cluster tag, tag escaping, absent fields, exact
read-back."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from accelpilot.schemas import HostSample
from accelpilot.schemas.metrics import METRICS
from accelpilot.streams.influx_lines import (
    SAMPLE_MEASUREMENT,
    SampleFormatter,
    escape_tag,
    sample_lines,
)

TS = 1_700_000_000_123_456_789


def sample(**changes: Any) -> HostSample:
    base: dict[str, Any] = dict(
        host_id="h1",
        ts_ns=TS,
        seq=42,
        interval_s=1.0,
        device_ids=["gpu0", "gpu1"],
        device_kinds=["gpu", "cpu"],
        metrics={"power_w": [250.5, None], "temp_c": [61.0, 40.25]},
    )
    return HostSample(**{**base, **changes})


# -- a parser that reads lines the way InfluxDB 1.x does (models/points.go) ----------------------
def split_unescaped(text: str, sep: str, maxsplit: int = -1) -> list[str]:
    """Split at ``sep`` unless the previous character is a backslash (InfluxDB's rule)."""
    parts, start = [], 0
    for i, ch in enumerate(text):
        if ch == sep and (i == 0 or text[i - 1] != "\\") and maxsplit != 0:
            parts.append(text[start:i])
            start = i + 1
            maxsplit -= 1
    return [*parts, text[start:]]


def unescape_tag(value: str) -> str:
    return value.replace("\\,", ",").replace("\\ ", " ").replace("\\=", "=")


def parse(line: str) -> tuple[str, dict[str, str], dict[str, float | int], int]:
    series, fields_text, ts = split_unescaped(line, " ")
    measurement, *tags = split_unescaped(series, ",")
    tag_map = dict(split_unescaped(tag, "=", 1) for tag in tags)
    fields: dict[str, float | int] = {}
    for field in fields_text.split(","):
        name, value = field.split("=")
        fields[name] = int(value[:-1]) if value.endswith("i") else float(value)
    return measurement, {k: unescape_tag(v) for k, v in tag_map.items()}, fields, int(ts)


# -- tests --------------------------------------------------------------------------------------
def test_exact_lines_for_a_small_sample() -> None:
    assert sample_lines(sample(), cluster="c1") == [
        "device_sample,cluster=c1,host=h1,device=gpu0,kind=gpu seq=42i,power_w=250.5,temp_c=61.0 "
        "1700000000123456789",
        "device_sample,cluster=c1,host=h1,device=gpu1,kind=cpu seq=42i,temp_c=40.25 "
        "1700000000123456789",
    ]


def test_each_formatter_tags_its_own_cluster() -> None:
    # The same layout through two clusters: the cached templates do not leak between them.
    full = sample(metrics={"power_w": [1.0, 2.0]})  # no null: the cached-template path
    a, b = SampleFormatter("eu-1"), SampleFormatter("us.2")
    assert a.lines(full)[0].startswith("device_sample,cluster=eu-1,host=h1,device=gpu0,")
    assert b.lines(full)[0].startswith("device_sample,cluster=us.2,host=h1,device=gpu0,")
    assert a.lines(full) == sample_lines(full, cluster="eu-1")
    assert sample_lines(full, cluster="us.2") == b.lines(full)


def test_tag_values_escape_commas_spaces_and_equals() -> None:
    assert escape_tag("rack 1,row=2") == r"rack\ 1\,row\=2"
    (line,) = sample_lines(
        sample(
            host_id="rack 1,row=2",
            device_ids=["a=b c,d"],
            device_kinds=["gpu"],
            metrics={"power_w": [1.0]},
        ),
        cluster="c",
    )
    assert (
        line == r"device_sample,cluster=c,host=rack\ 1\,row\=2,device=a\=b\ c\,d,kind=gpu "
        r"seq=42i,power_w=1.0 1700000000123456789"
    )
    assert parse(line)[1] == {
        "cluster": "c",
        "host": "rack 1,row=2",
        "device": "a=b c,d",
        "kind": "gpu",
    }


def test_device_without_metrics_still_has_seq() -> None:
    lines = sample_lines(sample(metrics={"power_w": [None, 3.0]}), cluster="c")
    assert [parse(line)[2] for line in lines] == [{"seq": 42}, {"seq": 42, "power_w": 3.0}]


def test_integral_metric_values_are_written_as_floats() -> None:
    # An int and a float field of the same name conflict in InfluxDB; metrics are always floats:
    # a number without the ``i`` suffix is a float in line protocol (decoded samples hold
    # floats, 68719476736.0; an int put in a sample in process is written 68719476736).
    for value in (2**36, float(2**36)):
        (line,) = sample_lines(
            sample(device_ids=["g"], device_kinds=["gpu"], metrics={"mem_used_bytes": [value]}),  # type: ignore[list-item]
            cluster="c",
        )
        assert line.split(" ")[1] in (
            "seq=42i,mem_used_bytes=68719476736",
            "seq=42i,mem_used_bytes=68719476736.0",
        )
        assert parse(line)[2]["mem_used_bytes"] == 2**36
        assert isinstance(parse(line)[2]["mem_used_bytes"], float)


ids = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\\"),
    min_size=1,
    max_size=12,
)
#: What worker.cluster accepts (accelpilot/config.py).
clusters = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


@st.composite
def samples_with_odd_ids(draw: st.DrawFn) -> HostSample:
    device_ids = draw(st.lists(ids, min_size=1, max_size=5, unique=True))
    n = len(device_ids)
    names = draw(st.lists(st.sampled_from(sorted(METRICS)), max_size=6, unique=True))
    values = st.none() | st.floats(allow_nan=False, allow_infinity=False)
    return HostSample(
        host_id=draw(ids),
        ts_ns=draw(st.integers(0, 2**63 - 1)),
        seq=draw(st.integers(0, 2**62)),
        interval_s=1.0,
        device_ids=device_ids,
        device_kinds=draw(
            st.lists(st.sampled_from(["gpu", "cpu", "npu", "tpu"]), min_size=n, max_size=n)
        ),
        metrics={name: draw(st.lists(values, min_size=n, max_size=n)) for name in names},
    )


@settings(max_examples=150)
@given(s=samples_with_odd_ids(), cluster=clusters)
def test_lines_read_back_exactly(s: HostSample, cluster: str) -> None:
    lines = sample_lines(s, cluster=cluster)
    assert len(lines) == s.n_devices
    for i, line in enumerate(lines):
        measurement, tags, fields, ts = parse(line)
        assert measurement == SAMPLE_MEASUREMENT
        assert tags == {
            "cluster": cluster,
            "host": s.host_id,
            "device": s.device_ids[i],
            "kind": s.device_kinds[i],
        }
        expected = {name: col[i] for name, col in s.metrics.items() if col[i] is not None}
        assert fields == {"seq": s.seq, **expected}  # floats compared exactly
        assert ts == s.ts_ns
