"""InfluxDB line protocol for the optimizer's records that the dashboards read.

Both are tagged ``cluster`` (the worker's ``worker.cluster``) too.

- ``action_result``: tags ``host``, ``device`` (``-`` for host-wide actions such as load
  weights), ``kind`` (the action kind: ``set_power_cap``, ``park``, ``wake``,
  ``set_load_weights``), ``outcome`` (``applied``, ``dry_run``, ``unchanged``, ``rejected``,
  ``failed``); fields ``new_cap_w`` and ``previous_cap_w`` (floats, absent when the action has no
  cap), ``reason`` and ``action_id`` (strings) and ``applied`` (1 when the outcome is
  ``applied``, else 0, int, so a panel can ``sum()`` it); time = the result's ``ts_ns`` plus
  ``crc32(action_id) % 1_000_000`` ns (under 1 ms). InfluxDB keys a point by series + time, so
  without that offset two results of one host, device, kind and outcome stamped at the same
  instant (say the load weights of two streams) would overwrite each other; with it they stay
  two points, and a replayed result still overwrites itself (InfluxDB's documented remedy for
  duplicate points: make the timestamp unique).
- ``optimizer_savings``: tags ``policy`` (the policy's name, e.g. ``learned``) and ``host``;
  fields ``energy_j`` (energy the host used under the policy over the period),
  ``baseline_energy_j`` (what the same work would have cost at the host's energy per unit of work
  before the optimizer acted on it: see :mod:`accelpilot.streams.fleet_events`),
  ``savings_ratio`` (``1 - energy_j / baseline_energy_j``) and ``period_s``; time = the end of
  the period. Written by the stream worker, one point per host and aggregate window.

>>> from accelpilot.schemas.action_results import ActionResult
>>> r = ActionResult(action_id="a1", host_id="n0", device_id="n0/gpu0", ts_ns=5,
...                  outcome="applied", previous_cap_w=700.0, new_cap_w=575.0)
>>> action_result_lines([(r, "set_power_cap")], cluster="c1")[0]
'action_result,cluster=c1,host=n0,device=n0/gpu0,kind=set_power_cap,outcome=applied applied=1i,new_cap_w=575.0,previous_cap_w=700.0,reason="",action_id="a1" 703400'
>>> savings_line("learned", "n0", 90.0, 100.0, 10.0, 7, cluster="c1")
'optimizer_savings,cluster=c1,policy=learned,host=n0 energy_j=90.0,baseline_energy_j=100.0,savings_ratio=0.1,period_s=10.0 7'
"""  # noqa: E501

from __future__ import annotations

import zlib
from collections.abc import Iterable

from accelpilot.schemas.action_results import ActionResult
from accelpilot.streams.influx_lines import escape_tag

ACTION_RESULT_MEASUREMENT = "action_result"
SAVINGS_MEASUREMENT = "optimizer_savings"


def _field_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def unique_offset_ns(action_id: str) -> int:
    """A deterministic sub-millisecond offset that keeps same-instant results apart."""
    return zlib.crc32(action_id.encode()) % 1_000_000


def action_result_lines(results: Iterable[tuple[ActionResult, str]], *, cluster: str) -> list[str]:
    """One point per ``(result, action_kind)`` (the kind lives on the action, not the result)."""
    series = f"{ACTION_RESULT_MEASUREMENT},cluster={escape_tag(cluster)},host="
    lines = []
    for r, kind in results:
        fields = [f"applied={1 if r.outcome == 'applied' else 0}i"]
        if r.new_cap_w is not None:
            fields.append(f"new_cap_w={float(r.new_cap_w)!r}")
        if r.previous_cap_w is not None:
            fields.append(f"previous_cap_w={float(r.previous_cap_w)!r}")
        fields.append(f"reason={_field_str(r.reason)}")
        fields.append(f"action_id={_field_str(r.action_id)}")
        lines.append(
            f"{series}{escape_tag(r.host_id)},"
            f"device={escape_tag(r.device_id or '-')},kind={escape_tag(kind)},"
            f"outcome={r.outcome} {','.join(fields)} {r.ts_ns + unique_offset_ns(r.action_id)}"
        )
    return lines


def savings_line(
    policy: str,
    host_id: str,
    energy_j: float,
    baseline_energy_j: float,
    period_s: float,
    ts_ns: int,
    *,
    cluster: str,
) -> str:
    """One ``optimizer_savings`` point; ``savings_ratio`` is 0 when the baseline is 0."""
    ratio = 1.0 - energy_j / baseline_energy_j if baseline_energy_j > 0 else 0.0
    return (
        f"{SAVINGS_MEASUREMENT},cluster={escape_tag(cluster)},policy={escape_tag(policy)},"
        f"host={escape_tag(host_id)} "
        f"energy_j={float(energy_j)!r},"
        f"baseline_energy_j={float(baseline_energy_j)!r},savings_ratio={round(ratio, 12)!r},"
        f"period_s={float(period_s)!r} {ts_ns}"
    )
