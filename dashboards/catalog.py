"""The accelpilot Grafana dashboards, as code (build them with :func:`all_dashboards`).

Six dashboards over the InfluxDB database the stream worker writes (``device_sample``,
``device_agg``/``host_agg``, ``anomaly``, ``alert``) and the optimizer's records
(``action_result``, ``optimizer_savings``, see :mod:`accelpilot.dashboards.measurements`).
Every query is raw InfluxQL with ``$timeFilter``, ``$__interval`` and regex template variables;
tests/service/test_dashboard_queries.py runs each one against a real InfluxDB.

Variables ``cluster`` (the worker's ``worker.cluster`` tag on every point), then ``host`` and
``device`` among the chosen clusters'. Every query filters by cluster and host (:data:`HOST`).
The cluster's "All" is the regex ``.*``, which also matches points written before the cluster tag
existed (InfluxDB reads a missing tag as ``""``); one chosen cluster excludes them
(docs/dashboards.md).
"""

from __future__ import annotations

from accelpilot.dashboards.model import (
    Dashboard,
    DashboardLink,
    DatasourceRef,
    FieldConfig,
    InfluxQLTarget,
    Panel,
    QueryVariable,
    Row,
    ValueMapping,
    thresholds,
)
from accelpilot.schemas.metrics import METRICS

DATASOURCE_UID = "accelpilot-influxdb"
FOLDER_UID = "accelpilot"
FOLDER_TITLE = "accelpilot"

UID_FLEET = "accelpilot-fleet"
UID_HOST = "accelpilot-host"
UID_DEVICE = "accelpilot-device"
UID_ANOMALIES = "accelpilot-anomalies"
UID_ENERGY = "accelpilot-energy"
UID_ACTIONS = "accelpilot-actions"

WINDOW = "10s"  # the aggregate window the panels read
CLUSTER = '"cluster" =~ /^$cluster$/'
#: The chosen clusters' chosen hosts: every panel query filters by it.
HOST = CLUSTER + ' AND "host" =~ /^$host$/'
DEVICE = '"device" =~ /^$device$/'
SEL = f"{HOST} AND {DEVICE}"

#: Grafana unit id and query scale for each unit of the metrics table.
UNIT_OF = {
    "W": ("watt", 1.0),
    "J": ("joule", 1.0),
    "degC": ("celsius", 1.0),
    "%": ("percent", 1.0),
    "B": ("bytes", 1.0),
    "MHz": ("hertz", 1e6),
    "1": ("none", 1.0),
    "bitmask": ("none", 1.0),
    "count": ("short", 1.0),
    "units/s": ("ops", 1.0),
}

TEMP = thresholds("green", (80, "orange"), (85, "red"))
UTIL = thresholds("blue", (30, "green"), (95, "orange"))
FIRING = thresholds("green", (1, "red"))
FIRING_MAP = (ValueMapping("0", "ok", "green"), ValueMapping("1", "FIRING", "red"))


def _vars(with_device: bool = True) -> tuple[QueryVariable, ...]:
    out = [
        # All = ".*", not the listed values: it keeps the points that have no cluster tag.
        QueryVariable(
            "cluster",
            "Cluster",
            'SHOW TAG VALUES FROM "device_sample" WITH KEY = "cluster"',
            all_value=".*",
        ),
        QueryVariable(
            "host",
            "Host",
            f'SHOW TAG VALUES FROM "device_sample" WITH KEY = "host" WHERE {CLUSTER}',
        ),
    ]
    if with_device:
        out.append(
            QueryVariable(
                "device",
                "Device",
                f'SHOW TAG VALUES FROM "device_sample" WITH KEY = "device" WHERE {HOST}',
            )
        )
    return tuple(out)


def _links(own: str) -> tuple[DashboardLink, ...]:
    names = {
        UID_FLEET: "Fleet overview",
        UID_HOST: "Host detail",
        UID_DEVICE: "Device detail",
        UID_ANOMALIES: "Anomalies and failure risk",
        UID_ENERGY: "Energy and savings",
        UID_ACTIONS: "Actions and outcomes",
    }
    return tuple(DashboardLink(t, uid) for uid, t in names.items() if uid != own)


def q(query: str, fmt: str = "time_series", alias: str | None = None) -> InfluxQLTarget:
    return InfluxQLTarget(query, "table" if fmt == "table" else "time_series", alias)


def _sum_last(field: str, measurement: str = "device_sample", where: str = SEL) -> str:
    """The fleet-wide sum of each device's latest value of ``field``."""
    return (
        f'SELECT sum("v") FROM (SELECT last("{field}") AS "v" FROM "{measurement}" '
        f'WHERE $timeFilter AND {where} GROUP BY "host", "device")'
    )


def _firing_count(where: str = HOST) -> str:
    """Alerts whose latest state is firing (severity is dropped: a raised severity is one alert)."""
    return (
        'SELECT sum("f") FROM (SELECT last("firing") AS "f" FROM "alert" '
        f'WHERE $timeFilter AND {where} GROUP BY "host", "device", "kind")'
    )


def _ds(ds: DatasourceRef | None) -> DatasourceRef:
    return ds or DatasourceRef(DATASOURCE_UID)


# -- fleet overview ----------------------------------------------------------------------------
def fleet_overview(ds: DatasourceRef | None = None) -> Dashboard:
    agg = f"\"window\" = '{WINDOW}' AND {HOST}"
    stats = Row(
        "Fleet now",
        [
            Panel(
                "stat",
                "Fleet power",
                [q(_sum_last("power_w", where=HOST))],
                FieldConfig("watt", color_mode="fixed", fixed_color="blue"),
                width=6,
                height=5,
            ),
            Panel(
                "stat",
                "Energy in range",
                [q(f'SELECT sum("energy_j") FROM "host_agg" WHERE $timeFilter AND {agg}')],
                FieldConfig("joule", color_mode="fixed", fixed_color="purple"),
                width=6,
                height=5,
            ),
            Panel(
                "gauge",
                "Mean compute utilization",
                [
                    q(
                        f'SELECT mean("util_compute_pct") FROM "device_sample" '
                        f"WHERE $timeFilter AND {HOST}"
                    )
                ],
                FieldConfig("percent", 0, 100, thresholds=UTIL, color_mode="thresholds"),
                width=6,
                height=5,
            ),
            Panel(
                "stat",
                "Alerts firing",
                [q(_firing_count())],
                FieldConfig("short", thresholds=FIRING, color_mode="thresholds"),
                width=6,
                height=5,
            ),
        ],
    )
    trends = Row(
        "Power, energy and utilization by host",
        [
            Panel(
                "timeseries",
                "Host power",
                [
                    q(
                        f'SELECT mean("power_w_mean") FROM "host_agg" WHERE $timeFilter AND {agg} '
                        'GROUP BY time($__interval), "host" fill(null)',
                        alias="$tag_host",
                    )
                ],
                FieldConfig("watt"),
            ),
            Panel(
                "timeseries",
                "Host compute utilization",
                [
                    q(
                        f'SELECT mean("util_compute_pct") FROM "device_sample" WHERE $timeFilter '
                        f'AND {HOST} GROUP BY time($__interval), "host" fill(null)',
                        alias="$tag_host",
                    )
                ],
                FieldConfig("percent", 0, 100),
            ),
            Panel(
                "bargauge",
                "Energy by host",
                [
                    q(
                        f'SELECT sum("energy_j") FROM "host_agg" WHERE $timeFilter AND {agg} '
                        'GROUP BY "host"',
                        alias="$tag_host",
                    )
                ],
                FieldConfig("joule", color_mode="continuous-GrYlRd"),
            ),
            Panel(
                "bargauge",
                "Hottest device by host",
                [
                    q(
                        f'SELECT max("temp_c") FROM "device_sample" WHERE $timeFilter AND {HOST} '
                        'GROUP BY "host"',
                        alias="$tag_host",
                    )
                ],
                FieldConfig("celsius", 0, 100, thresholds=TEMP, color_mode="thresholds"),
            ),
        ],
    )
    health = Row(
        "Health by host",
        [
            Panel(
                "bargauge",
                "Alerts firing by host",
                [
                    q(
                        'SELECT sum("f") FROM (SELECT last("firing") AS "f" FROM "alert" '
                        f'WHERE $timeFilter AND {HOST} GROUP BY "host", "device", "kind") '
                        'GROUP BY "host"',
                        alias="$tag_host",
                    )
                ],
                FieldConfig("short", thresholds=FIRING, color_mode="thresholds"),
            ),
            Panel(
                "timeseries",
                "Sample gaps by host",
                [
                    q(
                        f'SELECT sum("gap_count") FROM "host_agg" WHERE $timeFilter AND {agg} '
                        'GROUP BY time($__interval), "host" fill(0)',
                        alias="$tag_host",
                    )
                ],
                FieldConfig("short"),
            ),
        ],
    )
    return Dashboard(
        UID_FLEET,
        "accelpilot / Fleet overview",
        [stats, trends, health],
        _ds(ds),
        tags=("accelpilot", "fleet"),
        variables=_vars(with_device=False),
        links=_links(UID_FLEET),
        description="Power, energy, utilization and health of the whole fleet.",
    )


# -- host detail -------------------------------------------------------------------------------
def _by_device(field: str, where: str = SEL, scale: float = 1.0, fn: str = "mean") -> str:
    expr = f'{fn}("{field}")' + (f" * {int(scale)}" if scale != 1.0 else "")
    return (
        f'SELECT {expr} FROM "device_sample" WHERE $timeFilter AND {where} '
        'GROUP BY time($__interval), "device" fill(null)'
    )


def host_detail(ds: DatasourceRef | None = None) -> Dashboard:
    now = Row(
        "Host now",
        [
            Panel(
                "stat",
                "Host power",
                [q(_sum_last("power_w", where=HOST))],
                FieldConfig("watt", color_mode="fixed", fixed_color="blue"),
                width=8,
                height=5,
            ),
            Panel(
                "stat",
                "Power cap headroom",
                [
                    q(
                        'SELECT sum("c") - sum("p") FROM (SELECT last("cap_w") AS "c", '
                        'last("power_w") AS "p" FROM "device_sample" '
                        f'WHERE $timeFilter AND {HOST} GROUP BY "device")'
                    )
                ],
                FieldConfig("watt", color_mode="fixed", fixed_color="green"),
                width=8,
                height=5,
            ),
            Panel(
                "stat",
                "Alerts firing",
                [q(_firing_count())],
                FieldConfig("short", thresholds=FIRING, color_mode="thresholds"),
                width=8,
                height=5,
            ),
        ],
    )
    devices = Row(
        "Devices",
        [
            Panel(
                "timeseries",
                "Power by device",
                [q(_by_device("power_w", HOST), alias="$tag_device")],
                FieldConfig("watt"),
            ),
            Panel(
                "timeseries",
                "Power cap by device",
                [q(_by_device("cap_w", HOST), alias="$tag_device")],
                FieldConfig("watt"),
            ),
            Panel(
                "timeseries",
                "Temperature by device",
                [q(_by_device("temp_c", HOST, fn="max"), alias="$tag_device")],
                FieldConfig("celsius", thresholds=TEMP),
            ),
            Panel(
                "timeseries",
                "Compute utilization by device",
                [q(_by_device("util_compute_pct", HOST), alias="$tag_device")],
                FieldConfig("percent", 0, 100),
            ),
            Panel(
                "timeseries",
                "Memory used by device",
                [q(_by_device("mem_used_bytes", HOST), alias="$tag_device")],
                FieldConfig("bytes"),
            ),
            Panel(
                "timeseries",
                "SM clock by device",
                [q(_by_device("clock_sm_mhz", HOST, scale=1e6), alias="$tag_device")],
                FieldConfig("hertz"),
            ),
            Panel(
                "state-timeline",
                "Throttle reasons by device",
                [q(_by_device("throttle_reasons_mask", HOST, fn="last"), alias="$tag_device")],
                FieldConfig(
                    "none", thresholds=thresholds("green", (1, "orange")), color_mode="thresholds"
                ),
                width=24,
            ),
            Panel(
                "table",
                "Devices: latest values",
                [
                    q(
                        'SELECT last("power_w") AS "power_w", last("cap_w") AS "cap_w", '
                        'last("temp_c") AS "temp_c", last("util_compute_pct") AS "util_compute_pct" '  # noqa: E501
                        f'FROM "device_sample" WHERE $timeFilter AND {HOST} GROUP BY "host", "device"',  # noqa: E501
                        fmt="table",
                    )
                ],
                FieldConfig("short"),
                width=24,
            ),
        ],
    )
    events = Row(
        "Alerts",
        [
            Panel(
                "table",
                "Recent alerts on this host",
                [
                    q(
                        'SELECT "device", "kind", "severity", "state", "reason" FROM "alert" '
                        f"WHERE $timeFilter AND {HOST} ORDER BY time DESC LIMIT 100",
                        fmt="table",
                    )
                ],
                FieldConfig("short"),
                width=24,
            ),
        ],
    )
    return Dashboard(
        UID_HOST,
        "accelpilot / Host detail",
        [now, devices, events],
        _ds(ds),
        tags=("accelpilot", "host"),
        variables=_vars(with_device=False),  # every device of the host: no device filter
        links=_links(UID_HOST),
        description="Every device of the selected hosts.",
    )


# -- device detail: every metric of the metrics table -------------------------------------------
def device_detail(ds: DatasourceRef | None = None) -> Dashboard:
    panels = []
    for m in METRICS.values():
        unit, scale = UNIT_OF[m.unit]
        title = f"{m.name} ({m.unit}): {m.description}"
        if m.unit == "bitmask":
            panels.append(
                Panel(
                    "state-timeline",
                    title,
                    [q(_by_device(m.name, scale=scale, fn="last"), alias="$tag_device")],
                    FieldConfig(
                        unit, thresholds=thresholds("green", (1, "orange")), color_mode="thresholds"
                    ),
                    width=24,
                )
            )
            continue
        fc = FieldConfig(unit, thresholds=TEMP) if unit == "celsius" else FieldConfig(unit)
        fn = "last" if m.unit in ("count", "J", "1") else "mean"
        panels.append(
            Panel(
                "timeseries",
                title,
                [q(_by_device(m.name, scale=scale, fn=fn), alias="$tag_device")],
                fc,
                width=8,
            )
        )
    agg = f"\"window\" = '{WINDOW}' AND {SEL}"
    windows = Row(
        f"{WINDOW} windows",
        [
            Panel(
                "timeseries",
                "Power p95 / max per window",
                [
                    q(
                        f'SELECT max("power_w_p95") FROM "device_agg" WHERE $timeFilter AND {agg} '
                        'GROUP BY time($__interval), "device" fill(null)',
                        alias="$tag_device p95",
                    ),
                    q(
                        f'SELECT max("power_w_max") FROM "device_agg" WHERE $timeFilter AND {agg} '
                        'GROUP BY time($__interval), "device" fill(null)',
                        alias="$tag_device max",
                    ),
                ],
                FieldConfig("watt"),
            ),
            Panel(
                "timeseries",
                "Energy per window",
                [
                    q(
                        f'SELECT sum("energy_j") FROM "device_agg" WHERE $timeFilter AND {agg} '
                        'GROUP BY time($__interval), "device" fill(null)',
                        alias="$tag_device",
                    )
                ],
                FieldConfig("joule"),
            ),
        ],
    )
    events = Row(
        "Anomalies and alerts",
        [
            Panel(
                "timeseries",
                "Anomaly scores",
                [
                    q(
                        f'SELECT max("score") FROM "anomaly" WHERE $timeFilter AND {SEL} '
                        'GROUP BY time($__interval), "device", "metric" fill(none)',
                        alias="$tag_device $tag_metric",
                    )
                ],
                FieldConfig("short", 0, 1),
            ),
            Panel(
                "state-timeline",
                "Alert states",
                [
                    q(
                        f'SELECT last("firing") FROM "alert" WHERE $timeFilter AND {SEL} '
                        'GROUP BY time($__interval), "device", "kind" fill(previous)',
                        alias="$tag_device $tag_kind",
                    )
                ],
                FieldConfig(
                    "none", thresholds=FIRING, color_mode="thresholds", mappings=FIRING_MAP
                ),
            ),
        ],
    )
    return Dashboard(
        UID_DEVICE,
        "accelpilot / Device detail",
        [Row("Every collected metric", panels), windows, events],
        _ds(ds),
        tags=("accelpilot", "device"),
        variables=_vars(),
        links=_links(UID_DEVICE),
        description="Every metric of the metrics table for the selected devices.",
    )


# -- anomalies and failure risk ----------------------------------------------------------------
def anomalies(ds: DatasourceRef | None = None) -> Dashboard:
    summary = Row(
        "Now",
        [
            Panel(
                "stat",
                "Alerts firing",
                [q(_firing_count())],
                FieldConfig("short", thresholds=FIRING, color_mode="thresholds"),
                width=8,
                height=5,
            ),
            Panel(
                "stat",
                "Anomaly scores in range",
                [q(f'SELECT count("score") FROM "anomaly" WHERE $timeFilter AND {SEL}')],
                FieldConfig("short", color_mode="fixed", fixed_color="orange"),
                width=8,
                height=5,
            ),
            Panel(
                "stat",
                "Devices at failure risk",
                [q(_firing_count(f"{HOST} AND \"kind\" = 'failure_risk'"))],
                FieldConfig("short", thresholds=FIRING, color_mode="thresholds"),
                width=8,
                height=5,
            ),
        ],
    )
    detail = Row(
        "Anomalies",
        [
            Panel(
                "timeseries",
                "Anomaly scores by device and metric",
                [
                    q(
                        f'SELECT max("score") FROM "anomaly" WHERE $timeFilter AND {SEL} '
                        'GROUP BY time($__interval), "device", "metric" fill(none)',
                        alias="$tag_device $tag_metric",
                    )
                ],
                FieldConfig("short", 0, 1, thresholds=thresholds("green", (0.6, "red"))),
            ),
            Panel(
                "bargauge",
                "Anomaly scores by metric",
                [
                    q(
                        f'SELECT count("score") FROM "anomaly" WHERE $timeFilter AND {SEL} '
                        'GROUP BY "metric"',
                        alias="$tag_metric",
                    )
                ],
                FieldConfig("short"),
            ),
        ],
    )
    risk = Row(
        "Failure risk, thermal and silence",
        [
            Panel(
                "state-timeline",
                "Alert states by device and kind",
                [
                    q(
                        f'SELECT last("firing") FROM "alert" WHERE $timeFilter AND {HOST} '
                        'GROUP BY time($__interval), "device", "kind" fill(previous)',
                        alias="$tag_device $tag_kind",
                    )
                ],
                FieldConfig(
                    "none", thresholds=FIRING, color_mode="thresholds", mappings=FIRING_MAP
                ),
                width=24,
                height=10,
            ),
            Panel(
                "table",
                "Failure-risk alerts",
                [
                    q(
                        'SELECT "device", "severity", "state", "reason" FROM "alert" '
                        f"WHERE $timeFilter AND {HOST} AND \"kind\" = 'failure_risk' "
                        "ORDER BY time DESC LIMIT 50",
                        fmt="table",
                    )
                ],
                FieldConfig("short"),
            ),
            Panel(
                "timeseries",
                "Hottest device temperature",
                [q(_by_device("temp_c", fn="max"), alias="$tag_device")],
                FieldConfig("celsius", thresholds=TEMP),
            ),
            Panel(
                "table",
                "All alerts",
                [
                    q(
                        'SELECT "device", "kind", "severity", "state", "reason" FROM "alert" '
                        f"WHERE $timeFilter AND {HOST} ORDER BY time DESC LIMIT 200",
                        fmt="table",
                    )
                ],
                FieldConfig("short"),
                width=24,
            ),
        ],
    )
    return Dashboard(
        UID_ANOMALIES,
        "accelpilot / Anomalies and failure risk",
        [summary, detail, risk],
        _ds(ds),
        tags=("accelpilot", "anomalies"),
        variables=_vars(),
        links=_links(UID_ANOMALIES),
        description="Detector scores, failure-risk, thermal, throttle and silence alerts.",
    )


# -- energy and savings ------------------------------------------------------------------------
def energy(ds: DatasourceRef | None = None) -> Dashboard:
    pol = '"policy" =~ /^$policy$/'
    variables = (
        *_vars(with_device=False),
        QueryVariable(
            "policy",
            "Policy",
            f'SHOW TAG VALUES FROM "optimizer_savings" WITH KEY = "policy" WHERE {CLUSTER}',
        ),
    )
    now = Row(
        "Savings",
        [
            Panel(
                "stat",
                "Savings ratio in range (energy per unit of work vs baseline)",
                [
                    q(
                        'SELECT 1 - sum("energy_j") / sum("baseline_energy_j") AS "savings_ratio" '
                        f'FROM "optimizer_savings" WHERE $timeFilter AND {pol} AND {HOST} '
                        'GROUP BY "policy"',
                        alias="$tag_policy",
                    )
                ],
                FieldConfig(
                    "percentunit",
                    thresholds=thresholds("orange", (0.05, "green")),
                    color_mode="thresholds",
                ),
                width=8,
                height=5,
            ),
            Panel(
                "stat",
                "Energy saved in range",
                [
                    q(
                        'SELECT sum("baseline_energy_j") - sum("energy_j") FROM "optimizer_savings" '  # noqa: E501
                        f"WHERE $timeFilter AND {pol} AND {HOST}"
                    )
                ],
                FieldConfig("joule", color_mode="fixed", fixed_color="green"),
                width=8,
                height=5,
            ),
            Panel(
                "stat",
                "Fleet energy in range",
                [
                    q(
                        f'SELECT sum("energy_j") FROM "host_agg" WHERE $timeFilter AND '
                        f"\"window\" = '{WINDOW}' AND {HOST}"
                    )
                ],
                FieldConfig("joule", color_mode="fixed", fixed_color="purple"),
                width=8,
                height=5,
            ),
        ],
    )
    trends = Row(
        "Energy",
        [
            Panel(
                "timeseries",
                "Energy vs baseline",
                [
                    q(
                        'SELECT sum("energy_j") AS "policy", sum("baseline_energy_j") AS "baseline" '  # noqa: E501
                        f'FROM "optimizer_savings" WHERE $timeFilter AND {pol} AND {HOST} '
                        'GROUP BY time($__interval), "policy" fill(null)'
                    )
                ],
                FieldConfig("joule"),
            ),
            Panel(
                "timeseries",
                "Savings ratio",
                [
                    q(
                        'SELECT 1 - sum("energy_j") / sum("baseline_energy_j") AS "savings_ratio" '
                        f'FROM "optimizer_savings" WHERE $timeFilter AND {pol} AND {HOST} '
                        'GROUP BY time($__interval), "policy" fill(none)',
                        alias="$tag_policy",
                    )
                ],
                FieldConfig("percentunit"),
            ),
            Panel(
                "timeseries",
                "Host energy per window",
                [
                    q(
                        f'SELECT sum("energy_j") FROM "host_agg" WHERE $timeFilter AND '
                        f'"window" = \'{WINDOW}\' AND {HOST} GROUP BY time($__interval), "host" '
                        "fill(null)",
                        alias="$tag_host",
                    )
                ],
                FieldConfig("joule"),
            ),
            Panel(
                "timeseries",
                "Fleet power vs caps",
                [
                    q(
                        f'SELECT sum("power_w_mean") FROM "host_agg" WHERE $timeFilter AND '
                        f"\"window\" = '{WINDOW}' AND {HOST} GROUP BY time($__interval) fill(null)",
                        alias="power",
                    ),
                    q(
                        f'SELECT sum("cap_w_mean") FROM "host_agg" WHERE $timeFilter AND '
                        f"\"window\" = '{WINDOW}' AND {HOST} GROUP BY time($__interval) fill(null)",
                        alias="caps",
                    ),
                ],
                FieldConfig("watt"),
            ),
        ],
    )
    return Dashboard(
        UID_ENERGY,
        "accelpilot / Energy and savings",
        [now, trends],
        _ds(ds),
        tags=("accelpilot", "energy", "optimizer"),
        variables=variables,
        links=_links(UID_ENERGY),
        description=(
            "Energy used, and what the optimizer saved: measured energy against the same work "
            "at each host's energy per unit of work before the optimizer acted on it."
        ),
    )


# -- actions and outcomes ----------------------------------------------------------------------
def actions(ds: DatasourceRef | None = None) -> Dashboard:
    now = Row(
        "Actions in range",
        [
            Panel(
                "stat",
                "Actions",
                [q(f'SELECT count("action_id") FROM "action_result" WHERE $timeFilter AND {HOST}')],
                FieldConfig("short", color_mode="fixed", fixed_color="blue"),
                width=8,
                height=5,
            ),
            Panel(
                "stat",
                "Not applied (rejected, failed, dry-run, unchanged)",
                [
                    q(
                        'SELECT count("action_id") - sum("applied") FROM "action_result" '
                        f"WHERE $timeFilter AND {HOST}"
                    )
                ],
                FieldConfig(
                    "short", thresholds=thresholds("green", (1, "orange")), color_mode="thresholds"
                ),
                width=8,
                height=5,
            ),
            Panel(
                "bargauge",
                "Outcomes",
                [
                    q(
                        f'SELECT count("action_id") FROM "action_result" WHERE $timeFilter AND {HOST} '  # noqa: E501
                        'GROUP BY "outcome"',
                        alias="$tag_outcome",
                    )
                ],
                FieldConfig("short"),
                width=8,
                height=5,
            ),
        ],
    )
    trends = Row(
        "Over time",
        [
            Panel(
                "timeseries",
                "Actions by kind",
                [
                    q(
                        f'SELECT count("action_id") FROM "action_result" WHERE $timeFilter AND {HOST} '  # noqa: E501
                        'GROUP BY time($__interval), "kind" fill(0)',
                        alias="$tag_kind",
                    )
                ],
                FieldConfig("short"),
            ),
            Panel(
                "timeseries",
                "Power caps set",
                [
                    q(
                        f'SELECT last("new_cap_w") FROM "action_result" WHERE $timeFilter AND {SEL} '  # noqa: E501
                        'AND "kind" = \'set_power_cap\' GROUP BY time($__interval), "device" '
                        "fill(previous)",
                        alias="$tag_device",
                    )
                ],
                FieldConfig("watt"),
            ),
            Panel(
                "timeseries",
                "Cap change per action",
                [
                    q(
                        'SELECT mean("d") FROM (SELECT "new_cap_w" - "previous_cap_w" AS "d" '
                        f'FROM "action_result" WHERE $timeFilter AND {SEL}) '
                        "GROUP BY time($__interval) fill(none)",
                        alias="mean change",
                    )
                ],
                FieldConfig("watt"),
            ),
            Panel(
                "table",
                "Recent actions",
                [
                    q(
                        'SELECT "host", "device", "kind", "outcome", "previous_cap_w", "new_cap_w", '  # noqa: E501
                        f'"reason", "action_id" FROM "action_result" WHERE $timeFilter AND {HOST} '
                        "ORDER BY time DESC LIMIT 200",
                        fmt="table",
                    )
                ],
                FieldConfig("short"),
            ),
        ],
    )
    return Dashboard(
        UID_ACTIONS,
        "accelpilot / Actions and outcomes",
        [now, trends],
        _ds(ds),
        tags=("accelpilot", "actions", "optimizer"),
        variables=_vars(),
        links=_links(UID_ACTIONS),
        description="What the optimizer asked for and what the actuators did.",
    )


def all_dashboards(datasource_uid: str = DATASOURCE_UID) -> list[Dashboard]:
    ds = DatasourceRef(datasource_uid)
    return [f(ds) for f in (fleet_overview, host_detail, device_detail, anomalies, energy, actions)]
