"""Write the dashboards and alerting as Grafana provisioning files, or push them over HTTP.

:func:`export` writes Grafana's file-provisioning layout under ``out_dir``::

    datasources/accelpilot.yaml        the InfluxDB datasource (InfluxQL, stable uid)
    dashboards/accelpilot.yaml         the dashboard provider, reading dashboards/json/
    dashboards/json/<uid>.json         one file per dashboard
    alerting/rules.yaml                alert rule group
    alerting/contact-points.yaml       webhook (and e-mail) receivers
    alerting/policies.yaml             the notification policy tree

:func:`push` upserts the same objects through grafana-client, by stable uid, and reports what it
created, updated or left unchanged (run it twice: the second run changes nothing). Endpoints:
docs/dashboards.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from accelpilot.dashboards import alert_rules
from accelpilot.dashboards.catalog import (
    DATASOURCE_UID,
    FOLDER_TITLE,
    FOLDER_UID,
    all_dashboards,
)

DATASOURCE_NAME = "accelpilot InfluxDB"
#: Where ``accelpilot alerts serve`` receives Grafana's webhook notifications by default.
DEFAULT_WEBHOOK_URL = "http://127.0.0.1:9095/grafana"


def datasource(influx_url: str, database: str, datasource_uid: str = DATASOURCE_UID) -> dict:  # type: ignore[type-arg]
    """The InfluxDB datasource in the HTTP API's shape (InfluxQL over the v1 API)."""
    return {
        "uid": datasource_uid,
        "name": DATASOURCE_NAME,
        "type": "influxdb",
        "access": "proxy",
        "url": influx_url,
        "database": database,
        "isDefault": False,
        "jsonData": {
            "version": "InfluxQL",
            "dbName": database,
            "httpMode": "POST",
            "timeInterval": "1s",
        },
    }


def export(
    out_dir: Path,
    *,
    influx_url: str,
    database: str,
    webhook_url: str = DEFAULT_WEBHOOK_URL,
    email: str | None = None,
    datasource_uid: str = DATASOURCE_UID,
    webhook_token_env: str | None = None,
) -> list[Path]:
    """Write the provisioning layout; returns the files written. ``webhook_token_env``: the
    contact point's bearer token is written as ``${NAME}`` (Grafana expands it when it reads
    the file), never in clear."""
    out_dir = Path(out_dir)
    written: list[Path] = []

    def put(rel: str, doc: Any) -> None:
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".json"):
            path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
        else:
            path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
        written.append(path)

    ds = datasource(influx_url, database, datasource_uid)
    ds_file = {k: v for k, v in ds.items() if k != "isDefault"}
    put(
        "datasources/accelpilot.yaml",
        {
            "apiVersion": 1,
            "datasources": [{**ds_file, "orgId": 1, "editable": False, "isDefault": False}],
        },
    )
    put(
        "dashboards/accelpilot.yaml",
        {
            "apiVersion": 1,
            "providers": [
                {
                    "name": "accelpilot",
                    "orgId": 1,
                    "folder": FOLDER_TITLE,
                    "folderUid": FOLDER_UID,
                    "type": "file",
                    "disableDeletion": False,
                    "allowUiUpdates": False,
                    "updateIntervalSeconds": 60,
                    "options": {
                        "path": str((out_dir / "dashboards" / "json").resolve()),
                        "foldersFromFilesStructure": False,
                    },
                }
            ],
        },
    )
    for d in all_dashboards(datasource_uid):
        put(f"dashboards/json/{d.uid}.json", d.to_json())
    put("alerting/rules.yaml", alert_rules.rule_groups(datasource_uid, FOLDER_TITLE))
    token_ref = f"${{{webhook_token_env}}}" if webhook_token_env else None
    put(
        "alerting/contact-points.yaml",
        alert_rules.contact_points_file(webhook_url, email, token_ref),
    )
    put("alerting/policies.yaml", alert_rules.policies_file(email))
    return written


@dataclass
class PushReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def to_text(self) -> str:
        return "\n".join(
            f"{name}: {', '.join(items) or '-'}"
            for name, items in (
                ("created", self.created),
                ("updated", self.updated),
                ("unchanged", self.unchanged),
            )
        )


def _subset_equal(want: Any, have: Any) -> bool:
    """True when every key of ``want`` has the same value in ``have`` (recursively)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(
            k in have and _subset_equal(v, have[k]) for k, v in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(want) == len(have)
            and all(_subset_equal(w, h) for w, h in zip(want, have, strict=True))
        )
    return bool(want == have)


def _get_or_none(call: Any, *args: Any) -> Any:
    from grafana_client.client import GrafanaClientError

    try:
        return call(*args)
    except GrafanaClientError as e:
        if e.status_code == 404:
            return None
        raise


def push(
    url: str,
    token: str,
    *,
    influx_url: str,
    database: str,
    webhook_url: str = DEFAULT_WEBHOOK_URL,
    email: str | None = None,
    datasource_uid: str = DATASOURCE_UID,
    api: Any = None,
    webhook_token: str | None = None,
) -> PushReport:
    """Upsert datasource, folder, dashboards, alert rules, contact points and policy tree."""
    from grafana_client import GrafanaApi

    api = api or GrafanaApi.from_url(url, credential=token)
    report = PushReport()

    def record(name: str, existing: Any, want: Any, create: Any, update: Any) -> None:
        if existing is None:
            create()
            report.created.append(name)
        elif _subset_equal(want, existing):
            report.unchanged.append(name)
        else:
            update()
            report.updated.append(name)

    # datasource: GET/PUT /api/datasources/uid/:uid, POST /api/datasources
    ds = datasource(influx_url, database, datasource_uid)
    have = _get_or_none(api.datasource.get_datasource_by_uid, datasource_uid)
    record(
        f"datasource/{datasource_uid}",
        have,
        ds,
        lambda: api.datasource.create_datasource(ds),
        lambda: api.datasource.update_datasource_by_uid(datasource_uid, ds),
    )

    # folder: GET /api/folders/:uid, POST /api/folders, PUT /api/folders/:uid
    folder = _get_or_none(api.folder.get_folder, FOLDER_UID)
    record(
        f"folder/{FOLDER_UID}",
        folder,
        {"uid": FOLDER_UID, "title": FOLDER_TITLE},
        lambda: api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID),
        lambda: api.folder.update_folder(FOLDER_UID, title=FOLDER_TITLE, overwrite=True),
    )

    # dashboards: GET /api/dashboards/uid/:uid, POST /api/dashboards/db (overwrite by uid)
    for d in all_dashboards(datasource_uid):
        body = d.to_json()
        got = _get_or_none(api.dashboard.get_dashboard, d.uid)
        existing = None
        if got is not None:
            same_folder = got.get("meta", {}).get("folderUid") == FOLDER_UID
            existing = {**got.get("dashboard", {}), "__folder": same_folder}
        want = {**{k: v for k, v in body.items() if k != "version"}, "__folder": True}
        record(
            f"dashboard/{d.uid}",
            existing,
            want,
            *(
                2
                * [
                    lambda body=body: api.dashboard.update_dashboard(
                        {
                            "dashboard": body,
                            "folderUid": FOLDER_UID,
                            "overwrite": True,
                            "message": "accelpilot dashboards push",
                        }
                    )
                ]
            ),
        )

    # alert rules: GET/PUT /api/v1/provisioning/alert-rules/:uid, POST .../alert-rules,
    # PUT /api/v1/provisioning/folder/:folderUid/rule-groups/:group (evaluation interval)
    prov = api.alertingprovisioning
    group_before = _get_or_none(prov.get_rule_group, FOLDER_UID, alert_rules.GROUP)
    for rule in alert_rules.api_rules(datasource_uid, FOLDER_UID):
        have = _get_or_none(prov.get_alertrule, rule["uid"])
        record(
            f"alert-rule/{rule['uid']}",
            have,
            rule,
            lambda rule=rule: prov.create_alertrule(rule),
            lambda rule=rule: prov.update_alertrule(rule["uid"], rule),
        )
    # Grafana creates the group with its first rule: reported as created when this push did so.
    group = prov.get_rule_group(FOLDER_UID, alert_rules.GROUP)

    def set_interval() -> None:
        if group.get("interval") != alert_rules.INTERVAL_S:
            body = {**group, "interval": alert_rules.INTERVAL_S}
            prov.update_rule_group(FOLDER_UID, alert_rules.GROUP, body)

    record(
        f"rule-group/{FOLDER_UID}/{alert_rules.GROUP}",
        group if group_before is not None else None,
        {"interval": alert_rules.INTERVAL_S},
        set_interval,
        set_interval,
    )

    # contact points: GET/POST /api/v1/provisioning/contact-points, PUT .../contact-points/:uid
    existing_cps = {cp.get("uid"): cp for cp in prov.get_contactpoints() or []}
    for cp in alert_rules.contact_points(webhook_url, email, webhook_token):
        # Grafana never reads secure fields back (the bearer token): compare the rest.
        settings = {k: v for k, v in cp["settings"].items() if k != "authorization_credentials"}
        record(
            f"contact-point/{cp['uid']}",
            existing_cps.get(cp["uid"]),
            {**cp, "settings": settings},
            lambda cp=cp: prov.create_contactpoint(cp),
            lambda cp=cp: prov.update_contactpoint(cp["uid"], cp),
        )

    # notification policies: GET/PUT /api/v1/provisioning/policies (the whole tree)
    tree = alert_rules.policy_tree(email)
    have_tree = prov.get_notification_policy_tree()
    if _subset_equal(tree, have_tree):
        report.unchanged.append("policies")
    else:
        prov.set_notification_policy_tree(tree)
        report.updated.append("policies")
    return report
