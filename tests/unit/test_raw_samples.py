"""worker.raw_samples: every sample, or one per device per raw_every_s, as device_sample lines;
aggregates, anomalies and alerts are the same whichever is chosen."""

from __future__ import annotations

import pytest

from accelpilot.collectors.synthetic import synthetic_samples
from accelpilot.config import WorkerSettings
from accelpilot.schemas import codec
from accelpilot.streams.batch_stages import BatchStages
from accelpilot.streams.influx_lines import SAMPLE_MEASUREMENT

T0 = 1_700_000_040 * 10**9 // (60 * 10**9) * 60 * 10**9  # on a minute
TICKS = 95


def _run(raw_samples: str, raws: list[bytes], **kw: float) -> tuple[list[str], list[str]]:
    w = WorkerSettings(raw_samples=raw_samples, close_spread_s=0.0, **kw)  # type: ignore[arg-type]
    now = T0 + (TICKS + 100) * 10**9
    out = BatchStages(w, clock=lambda: now).run(raws, list(range(len(raws))), now)
    raw = [line for line in out.lines if line.startswith(SAMPLE_MEASUREMENT + ",")]
    rest = [line for line in out.lines if not line.startswith(SAMPLE_MEASUREMENT + ",")]
    return raw, rest


@pytest.fixture(scope="module")
def raws() -> list[bytes]:
    # Two hosts, 1 s ticks with the collector's jitter-free clock, 3 devices each.
    return [
        codec.encode(s)
        for h in ("h1", "h2")
        for s in synthetic_samples(h, n_devices=3, n_ticks=TICKS, start_ns=T0)
    ]


def test_all_writes_a_line_per_device_of_every_sample(raws: list[bytes]) -> None:
    raw, _ = _run("all", raws)
    assert len(raw) == 2 * TICKS * 3


def test_every_keeps_the_first_sample_of_each_period_and_the_same_ones_on_a_replay(
    raws: list[bytes],
) -> None:
    raw, rest = _run("every", raws, raw_every_s=10.0)
    times = sorted({int(line.rsplit(" ", 1)[1]) for line in raw})
    assert times == [T0 + k * 10 * 10**9 for k in range(10)]  # 0, 10, ..., 90 s
    assert len(raw) == 10 * 2 * 3
    replay, _ = _run("every", raws[35:TICKS], raw_every_s=10.0)  # h1, from inside a period
    since_35_s = [
        line for line in raw if ",host=h1," in line and int(line.rsplit(" ", 1)[1]) >= T0 + 35e9
    ]
    assert replay == since_35_s and len(replay) == 6 * 3  # 40, 50, ..., 90 s
    _, rest_all = _run("all", raws)
    assert rest == rest_all  # aggregates, anomalies, alerts: unchanged


def test_a_bad_mode_names_the_field() -> None:
    with pytest.raises(ValueError, match="raw_samples"):
        WorkerSettings(raw_samples="off")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="raw_every_s"):
        WorkerSettings(raw_samples="every", raw_every_s=60.0)  # the silence rules need 2/min
