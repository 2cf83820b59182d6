"""InfluxDB line protocol for accelpilot payloads (the one place points are shaped).

Series are ``measurement + tags``; a point is keyed by series + timestamp, so writing the same
sample twice overwrites instead of duplicating: replays after a crash are idempotent.

Measurement ``device_sample``: tags ``cluster`` (the worker's ``worker.cluster``: the samples
schema has no cluster, a worker group serves one), ``host``, ``device``, ``kind``; one field per
reported metric (absent metrics are absent fields), plus ``seq`` (int); time = the sample's
``ts_ns``.

Speed: a host's lines differ from tick to tick only in their numbers, so the text around the
numbers is built once per *layout* (host, devices, kinds, metric names; the cluster is fixed per
formatter) and cached as one ``%s`` template, with the order in which the template takes the
numbers. The numbers of a tick (``[seq, ts, *columns]``, metric-major as the sample holds them)
are formatted by msgspec's JSON encoder in one C call (shortest round-trip text, like ``repr``,
~3x faster; exponents are written ``1e16`` rather than ``1e+16``, which line protocol reads the
same), split at the commas, put in the template's (device-major) order by one
``operator.itemgetter`` call and dropped into the template: no Python loop over the values.
A metric value is written as the sample holds it: decoded samples hold floats (``5.0``); an
int in a sample built in process is written ``5``, which line protocol also reads as a float
(only an ``i`` suffix makes an integer field). A sample with an absent (``None``) value (its
numbers' JSON holds a ``null``) takes the plain per-device path.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from operator import itemgetter

import msgspec

from accelpilot.schemas.samples import HostSample

SAMPLE_MEASUREMENT = "device_sample"

_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_MAX_TEMPLATES = 100_000  # layouts cached (one per host in a steady fleet)
_encode = msgspec.json.Encoder().encode


def escape_tag(value: str) -> str:
    return value.translate(_TAG_ESCAPES)


def _series(prefix: str, host: str, device: str, kind: str) -> str:
    return f"{prefix}host={host},device={escape_tag(device)},kind={kind}"


class SampleFormatter:
    """:func:`sample_lines` with the per-layout templates kept between calls; every line is
    tagged ``cluster=<cluster>``."""

    def __init__(self, cluster: str) -> None:
        self.cluster = cluster
        self._prefix = f"{SAMPLE_MEASUREMENT},cluster={escape_tag(cluster)},"
        self._templates: dict[
            tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...]],
            tuple[str, Callable[[list[str]], tuple[str, ...]]],
        ] = {}

    def lines(self, sample: HostSample) -> list[str]:
        """One line per device of the sample; devices with no reported metric still carry
        ``seq``."""
        return self.text(sample).split("\n") if sample.device_ids else []

    def text(self, sample: HostSample) -> str:
        """The sample's lines joined by newlines (what the sink sends)."""
        if not sample.device_ids:
            return ""
        metrics = sample.metrics
        numbers = _encode([sample.seq, sample.ts_ns, *metrics.values()])
        if b"null" in numbers:  # an absent value (JSON has no other null among numbers)
            return "\n".join(_plain_lines(sample, self._prefix))
        key = (sample.host_id, tuple(sample.device_ids), tuple(sample.device_kinds), tuple(metrics))
        layout = self._templates.get(key)
        if layout is None:
            layout = self._templates[key] = self._layout(sample)
        template, order = layout
        flat = numbers[1:-1].decode().replace("[", "").replace("]", "").split(",")
        return template % order(flat)

    def _layout(self, sample: HostSample) -> tuple[str, Callable[[list[str]], tuple[str, ...]]]:
        """The template of a layout, and the pick that puts ``[seq, ts, column 0 ..., column
        1 ..., ...]`` in its order: per device ``seq``, its value of each metric, ``ts``."""
        if len(self._templates) >= _MAX_TEMPLATES:
            self._templates.clear()
        host = escape_tag(sample.host_id)
        fields = "".join(f",{name}=%s" for name in sample.metrics)
        n, m = len(sample.device_ids), len(sample.metrics)
        template = "\n".join(
            _series(self._prefix, host, device, kind).replace("%", "%%") + f" seq=%si{fields} %s"
            for device, kind in zip(sample.device_ids, sample.device_kinds, strict=True)
        )
        # At least two indices per device (seq, ts): itemgetter returns a tuple.
        order = [k for i in range(n) for k in (0, *(2 + j * n + i for j in range(m)), 1)]
        return template, itemgetter(*order)


def _plain_lines(sample: HostSample, prefix: str) -> list[str]:
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
        series = _series(prefix, host, device, sample.device_kinds[i])
        lines.append(f"{series} {','.join(fields)} {ts}")
    return lines


@lru_cache(maxsize=16)
def _formatter(cluster: str) -> SampleFormatter:
    return SampleFormatter(cluster)


def sample_lines(sample: HostSample, *, cluster: str) -> list[str]:
    """One line per device of the sample, tagged ``cluster=<cluster>``; devices with no reported
    metric still carry ``seq``. (The worker keeps a :class:`SampleFormatter` of its own.)"""
    return _formatter(cluster).lines(sample)
