"""docs/schemas.md cannot drift from the code: every field, metric, topic and DLQ reason matches."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import msgspec
import msgspec.inspect as mi
import pytest

import accelpilot.streams.ingest
from accelpilot.config import WorkerSettings
from accelpilot.schemas import SUPPORTED_VERSION, codec
from accelpilot.schemas.codec import versions_of
from accelpilot.schemas.metrics import METRICS
from accelpilot.schemas.samples import HostSample
from accelpilot.schemas.topics import PAYLOAD_TYPES
from accelpilot.streams.influx_lines import SAMPLE_MEASUREMENT, sample_lines

DOC = Path(__file__).resolve().parents[2] / "docs" / "schemas.md"
CODE_NAME = re.compile(r"`([^`]+)`")
STRUCT_NAME = re.compile(r"`([A-Z][A-Za-z]+)`")


class Table(msgspec.Struct):
    section: str  # the "## " heading it is under
    owner: str | None  # the last `StructName` named in prose before it
    header: list[str]
    rows: list[list[str]]

    def column(self, i: int) -> list[str]:
        return [_code(row[i]) for row in self.rows]


def _code(cell: str) -> str:
    m = CODE_NAME.fullmatch(cell)
    return m.group(1) if m else cell


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def parse_tables(text: str) -> list[Table]:
    tables: list[Table] = []
    section, owner, current = "", None, None
    for line in text.splitlines():
        if line.startswith("|"):
            if current is None:
                current = Table(section, owner, _cells(line), [])
                tables.append(current)
            elif not set(line) <= set("|-: "):  # skip the |---| separator
                current.rows.append(_cells(line))
            continue
        current = None
        if line.startswith("## "):
            section, owner = line[3:].strip(), None
        owner = (STRUCT_NAME.findall(line) or [owner])[-1]
    return tables


TABLES = parse_tables(DOC.read_text(encoding="utf-8"))


def tables_with(first_header: str) -> list[Table]:
    return [t for t in TABLES if t.header[0] == first_header]


def structs_in(t: mi.Type) -> Iterator[type[msgspec.Struct]]:
    if isinstance(t, mi.StructType):
        yield t.cls
        for f in t.fields:
            yield from structs_in(f.type)
    elif isinstance(t, mi.UnionType):
        for member in t.types:
            yield from structs_in(member)
    elif isinstance(t, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        yield from structs_in(t.item_type)
    elif isinstance(t, mi.DictType):
        yield from structs_in(t.value_type)


CASES = [
    (topic, struct)
    for topic, kind in PAYLOAD_TYPES.items()
    for struct in dict.fromkeys(structs_in(mi.type_info(kind)))
]


def test_nested_structs_are_found() -> None:
    assert {s.__name__ for _, s in CASES} >= {"DeviceEvent", "AgentHealth", "MetricStats"}


@pytest.mark.parametrize(("topic", "struct"), CASES, ids=[f"{t}:{s.__name__}" for t, s in CASES])
def test_every_field_is_documented_in_its_topic(topic: str, struct: type[msgspec.Struct]) -> None:
    tables = [t for t in tables_with("Field") if t.owner == struct.__name__]
    assert len(tables) == 1, f"docs/schemas.md needs one field table after `{struct.__name__}`"
    (table,) = tables
    assert table.section == f"`{topic}`", f"`{struct.__name__}` belongs under ## `{topic}`"
    fields = {f.encode_name: f for f in mi.type_info(struct).fields}
    assert set(table.column(0)) == set(fields), "documented fields differ from the code"
    assert table.column(0) == list(fields), "order as in the code"
    for row in table.rows:
        f = fields[_code(row[0])]
        nullable = isinstance(f.type, mi.UnionType) and mi.NoneType() in f.type.types
        assert row[1].endswith("null`") == nullable, f"{f.name}: type cell {row[1]}"
        if f.name != "v":  # v's default is stated once, in the version policy
            assert ("default" in row[3]) == (not f.required), f"{f.name}: say its default"


def test_topics_table() -> None:
    (table,) = tables_with("Topic")
    documented = {row[0]: (row[2], row[3]) for row in table.rows}
    assert documented == {
        f"`{topic}`": (f"`{kind.__name__}`", _version_cell(kind))
        for topic, kind in PAYLOAD_TYPES.items()
    }


def _version_cell(kind: type[msgspec.Struct]) -> str:
    """ "1", or "2 (reads 1, 2)": the version written, then those read if there are more."""
    versions = versions_of(kind)
    written = str(versions[-1])
    return (
        written
        if versions == (SUPPORTED_VERSION,)
        else (f"{written} (reads {', '.join(map(str, versions))})")
    )


def test_every_metric_with_unit_and_bounds() -> None:
    (table,) = tables_with("Metric")
    assert table.section == "`telemetry.samples`"
    assert table.column(0) == list(METRICS)
    for row in table.rows:
        m = METRICS[_code(row[0])]
        assert row[1] == m.unit, m.name
        assert (float(row[2].split()[0]), float(row[3].split()[0])) == (m.low, m.high), m.name


def _reasons_in_code() -> set[str]:
    pattern = re.compile(r'Error\(\s*"([a-z][a-z-]*)"')
    sources = [Path(codec.__file__), Path(accelpilot.streams.ingest.__file__)]
    found = {r for src in sources for r in pattern.findall(src.read_text(encoding="utf-8"))}
    loop = Path(accelpilot.streams.ingest.__file__).with_name("ingest_loop.py")
    internal = 'f"internal-error:' in loop.read_text(encoding="utf-8")
    return found | ({"internal-error:<Type>"} if internal else set())


def test_every_dlq_reason_is_documented() -> None:
    (table,) = tables_with("Reason")
    assert table.section == "`telemetry.dlq`"
    reasons = _reasons_in_code()
    assert {"not-json", "schema", "unsupported-version", "out-of-range"} <= reasons  # sanity
    assert set(table.column(0)) == reasons


def test_line_protocol_mapping() -> None:
    (table,) = tables_with("Line protocol")
    mapping = dict(zip(table.column(0), table.column(1), strict=True))
    assert mapping["measurement"] == SAMPLE_MEASUREMENT
    tags = {"tag `cluster`", "tag `host`", "tag `device`", "tag `kind`"}
    assert tags | {"field `seq`", "timestamp"} <= set(mapping)
    # The example is what the worker writes for it (with the default worker.cluster).
    (example,) = re.findall(r"^Example: `(device_sample,[^`]+)`$", DOC.read_text(), re.M)
    sample = HostSample(
        host_id="h1", ts_ns=1700000000123456789, seq=42, interval_s=1.0, device_ids=["gpu0"],
        device_kinds=["gpu"], metrics={"power_w": [250.5], "temp_c": [61.0]},
    )  # fmt: skip
    assert sample_lines(sample, cluster=WorkerSettings().cluster) == [example]
