"""A small typed builder for Grafana dashboard JSON (schemaVersion 39) with InfluxQL targets.

grafana-foundation-sdk builds dashboard JSON but has no InfluxDB query type, so this module is an
equivalent typed builder: frozen dataclasses for the parts of Grafana's dashboard model we use
(dashboard, row, panel, gridPos, fieldConfig, thresholds, templating, links) and an
:class:`InfluxQLTarget` (``rawQuery: true``). Nothing here is a hand-edited JSON blob; every
dashboard is ``Dashboard(...).to_json()``.

Layout: :class:`Dashboard` takes a list of :class:`Row` s; each row flows its panels left to
right over Grafana's 24 columns and wraps, so ``gridPos`` never overlaps or overflows.

>>> ds = DatasourceRef("influx-uid")
>>> p = Panel("timeseries", "Power", [InfluxQLTarget('SELECT mean("power_w") FROM x')],
...           FieldConfig(unit="watt"), width=12)
>>> d = Dashboard("uid-1", "Demo", rows=[Row("Power", [p, p])], datasource=ds).to_json()
>>> [(q["type"], q["gridPos"]) for q in d["panels"]]  # doctest: +NORMALIZE_WHITESPACE
[('row', {'x': 0, 'y': 0, 'w': 24, 'h': 1}), ('timeseries', {'x': 0, 'y': 1, 'w': 12, 'h': 8}),
 ('timeseries', {'x': 12, 'y': 1, 'w': 12, 'h': 8})]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

SCHEMA_VERSION = 39
GRID_COLUMNS = 24

PanelType = Literal["timeseries", "stat", "gauge", "table", "state-timeline", "bargauge"]
PANEL_TYPES: frozenset[str] = frozenset(
    ("timeseries", "stat", "gauge", "table", "state-timeline", "bargauge", "row")
)

#: Unit ids from Grafana's value formats (``packages/grafana-data/src/valueFormats/categories.ts``)
#: that these dashboards use. Clock speeds are stored in MHz and scaled to ``hertz`` in the query
#: (Grafana has no MHz unit; ``hertz`` is SI-prefixed, so 1.41e9 shows as 1.41 GHz).
UNITS: frozenset[str] = frozenset(
    (
        "watt",
        "kwatt",
        "joule",
        "kwatth",
        "celsius",
        "percent",
        "percentunit",
        "bytes",
        "decbytes",
        "hertz",
        "short",
        "none",
        "s",
        "ms",
        "ops",
    )
)

ResultFormat = Literal["time_series", "table"]
ColorMode = Literal["thresholds", "palette-classic", "fixed", "continuous-GrYlRd"]


@dataclass(frozen=True)
class DatasourceRef:
    """A datasource reference by uid (what provisioning gives the InfluxDB datasource)."""

    uid: str
    type: str = "influxdb"

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "uid": self.uid}


@dataclass(frozen=True)
class InfluxQLTarget:
    """A raw InfluxQL query. Use ``$timeFilter``, ``$__interval`` and regex template variables
    (``"host" =~ /^$host$/``) so Grafana substitutes the time range, bucket and selection."""

    query: str
    result_format: ResultFormat = "time_series"
    alias: str | None = None

    def to_json(self, ref_id: str, datasource: DatasourceRef) -> dict[str, Any]:
        out: dict[str, Any] = {
            "refId": ref_id,
            "datasource": datasource.to_json(),
            "rawQuery": True,
            "query": self.query,
            "resultFormat": self.result_format,
        }
        if self.alias:
            out["alias"] = self.alias
        return out


@dataclass(frozen=True)
class Step:
    """One threshold step: ``value=None`` is the base step (from -infinity)."""

    color: str
    value: float | None = None


@dataclass(frozen=True)
class Thresholds:
    steps: tuple[Step, ...] = (Step("green"),)
    mode: Literal["absolute", "percentage"] = "absolute"

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "steps": [{"color": s.color, "value": s.value} for s in self.steps],
        }


def thresholds(base: str, *steps: tuple[float, str]) -> Thresholds:
    """``thresholds("green", (80, "orange"), (90, "red"))``."""
    return Thresholds((Step(base), *(Step(c, v) for v, c in steps)))


@dataclass(frozen=True)
class ValueMapping:
    """A value -> text (and colour) mapping, e.g. ``1 -> FIRING (red)``."""

    value: str
    text: str
    color: str | None = None

    def to_json(self) -> dict[str, Any]:
        res: dict[str, Any] = {"text": self.text}
        if self.color:
            res["color"] = self.color
        return {"type": "value", "options": {self.value: res}}


@dataclass(frozen=True)
class FieldConfig:
    unit: str = "short"
    min: float | None = None
    max: float | None = None
    decimals: int | None = None
    thresholds: Thresholds = Thresholds()
    color_mode: ColorMode = "palette-classic"
    fixed_color: str | None = None
    mappings: tuple[ValueMapping, ...] = ()

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(
                f"unit {self.unit!r} is not a Grafana unit id we know: {sorted(UNITS)}"
            )

    def to_json(self) -> dict[str, Any]:
        defaults: dict[str, Any] = {
            "unit": self.unit,
            "thresholds": self.thresholds.to_json(),
            "color": {"mode": self.color_mode},
            "mappings": [m.to_json() for m in self.mappings],
        }
        if self.fixed_color:
            defaults["color"]["fixedColor"] = self.fixed_color
        for key in ("min", "max", "decimals"):
            if getattr(self, key) is not None:
                defaults[key] = getattr(self, key)
        return {"defaults": defaults, "overrides": []}


def _default_options(kind: str) -> dict[str, Any]:
    reduce = {"calcs": ["lastNotNull"], "fields": "", "values": False}
    if kind == "timeseries":
        return {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    if kind == "stat":
        return {"reduceOptions": reduce, "colorMode": "background", "graphMode": "area"}
    if kind == "gauge":
        return {"reduceOptions": reduce, "showThresholdMarkers": True}
    if kind == "bargauge":
        return {"reduceOptions": reduce, "displayMode": "gradient", "orientation": "horizontal"}
    if kind == "state-timeline":
        return {"mergeValues": True, "showValue": "auto", "rowHeight": 0.9}
    if kind == "table":
        return {"showHeader": True, "cellHeight": "sm"}
    return {}


@dataclass(frozen=True)
class Panel:
    kind: PanelType
    title: str
    targets: list[InfluxQLTarget]
    field_config: FieldConfig = FieldConfig()
    width: int = 12
    height: int = 8
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    interval: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in PANEL_TYPES or self.kind == "row":
            raise ValueError(f"panel type {self.kind!r} is not one of {sorted(PANEL_TYPES)}")
        if not 1 <= self.width <= GRID_COLUMNS:
            raise ValueError(f"panel {self.title!r}: width {self.width} not in 1..{GRID_COLUMNS}")
        if not self.targets:
            raise ValueError(f"panel {self.title!r} has no query")

    def to_json(
        self, panel_id: int, grid: dict[str, int], datasource: DatasourceRef
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": panel_id,
            "type": self.kind,
            "title": self.title,
            "description": self.description,
            "gridPos": grid,
            "datasource": datasource.to_json(),
            "targets": [
                t.to_json(chr(ord("A") + i), datasource) for i, t in enumerate(self.targets)
            ],
            "fieldConfig": self.field_config.to_json(),
            "options": {**_default_options(self.kind), **self.options},
        }
        if self.interval:
            out["interval"] = self.interval
        return out


@dataclass(frozen=True)
class Row:
    title: str
    panels: list[Panel]
    collapsed: bool = False


@dataclass(frozen=True)
class QueryVariable:
    """A ``query`` variable: values from an InfluxQL ``SHOW TAG VALUES`` on the datasource."""

    name: str
    label: str
    query: str
    multi: bool = True
    include_all: bool = True
    regex: str = ""
    # What "All" stands for in a query (Grafana's custom all value); None: every listed value.
    all_value: str | None = None

    def to_json(self, datasource: DatasourceRef) -> dict[str, Any]:
        return {
            "type": "query",
            "name": self.name,
            "label": self.label,
            "datasource": datasource.to_json(),
            "query": self.query,
            "definition": self.query,
            "refresh": 2,  # on time range change
            "sort": 1,
            "multi": self.multi,
            "includeAll": self.include_all,
            "allValue": self.all_value,
            "regex": self.regex,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "options": [],
            "hide": 0,
        }


Variable = QueryVariable


@dataclass(frozen=True)
class DashboardLink:
    """A link to another generated dashboard (by uid), keeping time range and variables."""

    title: str
    target_uid: str
    icon: str = "dashboard"

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "link",
            "title": self.title,
            "url": f"/d/{self.target_uid}",
            "icon": self.icon,
            "keepTime": True,
            "includeVars": True,
            "asDropdown": False,
            "targetBlank": False,
            "tags": [],
            "tooltip": "",
        }


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    rows: list[Row]
    datasource: DatasourceRef
    tags: tuple[str, ...] = ("accelpilot",)
    variables: tuple[Variable, ...] = ()
    links: tuple[DashboardLink, ...] = ()
    time_from: str = "now-6h"
    time_to: str = "now"
    refresh: str = "30s"
    description: str = ""

    def panels_json(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        y = 0
        panel_id = 1
        for row in self.rows:
            row_json: dict[str, Any] = {
                "id": panel_id,
                "type": "row",
                "title": row.title,
                "collapsed": row.collapsed,
                "gridPos": {"x": 0, "y": y, "w": GRID_COLUMNS, "h": 1},
                "panels": [],
            }
            panel_id += 1
            y += 1
            out.append(row_json)
            x, line_h = 0, 0
            for p in row.panels:
                if x + p.width > GRID_COLUMNS:
                    y, x, line_h = y + line_h, 0, 0
                grid = {"x": x, "y": y, "w": p.width, "h": p.height}
                panel = p.to_json(panel_id, grid, self.datasource)
                panel_id += 1
                (row_json["panels"] if row.collapsed else out).append(panel)
                x += p.width
                line_h = max(line_h, p.height)
            y += line_h
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": list(self.tags),
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "editable": True,
            "graphTooltip": 1,
            "timezone": "browser",
            "time": {"from": self.time_from, "to": self.time_to},
            "refresh": self.refresh,
            "timepicker": {},
            "fiscalYearStartMonth": 0,
            "liveNow": False,
            "annotations": {
                "list": [
                    {
                        "builtIn": 1,
                        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                        "enable": True,
                        "hide": True,
                        "iconColor": "rgba(0, 211, 255, 1)",
                        "name": "Annotations & Alerts",
                        "type": "dashboard",
                    }
                ]
            },
            "templating": {"list": [v.to_json(self.datasource) for v in self.variables]},
            "links": [link.to_json() for link in self.links],
            "panels": self.panels_json(),
        }
