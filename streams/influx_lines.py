"""InfluxDB line protocol for accelpilot payloads (the one place points are shaped).

Series are ``measurement + tags``; a point is keyed by series + timestamp, so writing the same
sample twice overwrites instead of duplicating: replays after a crash are idempotent.

Measurement ``device_sample``: tags ``host``, ``device``, ``kind``; one field per reported metric
(absent metrics are absent fields), plus ``seq`` (int); time = the sample's ``ts_ns``.
"""

from __future__ import annotations

from accelpilot.schemas.samples import HostSample

SAMPLE_MEASUREMENT = "device_sample"

_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})


def escape_tag(value: str) -> str:
    return value.translate(_TAG_ESCAPES)


def sample_lines(sample: HostSample) -> list[str]:
    """One line per device of the sample; devices with no reported metric still carry ``seq``."""
    host = escape_tag(sample.host_id)
    ts = sample.ts_ns
    seq_field = f"seq={sample.seq}i"
    names = list(sample.metrics)
    columns = [sample.metrics[name] for name in names]
    lines = []
    for i, device in enumerate(sample.device_ids):
        fields = [seq_field]
        for name, column in zip(names, columns, strict=True):
            value = column[i]
            if value is not None:
                fields.append(f"{name}={float(value)!r}")
        lines.append(
            f"{SAMPLE_MEASUREMENT},host={host},device={escape_tag(device)},"
            f"kind={sample.device_kinds[i]} {','.join(fields)} {ts}"
        )
    return lines
