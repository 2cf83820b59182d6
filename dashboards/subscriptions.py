"""Alert subscriptions: who gets which ``fleet.alerts``, how, and the durable store they live in.

A :class:`Subscription` names a destination (a webhook, generic JSON or Slack-compatible, or an
e-mail address list reached over SMTP), filters over the alert's fields, a grouping window and a
rate limit. The :class:`SubscriptionStore` keeps subscriptions in one SQLite file, together with
the delivery queue of :mod:`accelpilot.dashboards.notify` (pending deliveries, de-duplication
keys, recent sends for the rate limit, dead letters), so a restart loses nothing.

Secrets (the SMTP password) are ``SecretStr``: masked in ``repr`` and in :meth:`Subscription.
public`; webhook URLs, which often embed a token (Slack's do), are shown redacted there too. The
store file itself holds the secret in clear and is created readable by its owner only (0600).

>>> sub = Subscription.create(name="ops", destination={"type": "webhook", "url": "http://h/x"},
...                           filters={"min_severity": "warning", "host_glob": "gpu-*"})
>>> sub.filters.min_severity, sub.destination.format
('warning', 'json')
"""

from __future__ import annotations

import builtins
import fnmatch
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from accelpilot.errors import ConfigError
from accelpilot.schemas.alerts import Alert, AlertState, Severity

SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}
SCHEMA_VERSION = 1
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class SubscriptionError(ConfigError):
    """A subscription is invalid, unknown or clashes with another; the message names the field."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WebhookDestination(_Model):
    """POST to ``url``: ``format="json"`` (the alerts as in the schema) or ``"slack"``."""

    type: Literal["webhook"] = "webhook"
    url: str = Field(pattern=r"^https?://[^/\s]+", max_length=2000)
    format: Literal["json", "slack"] = "json"


class EmailDestination(_Model):
    """Mail ``to`` through ``smtp_host:smtp_port``; STARTTLS and login when asked."""

    type: Literal["email"] = "email"
    to: tuple[Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")], ...] = Field(min_length=1)
    smtp_host: str = Field(min_length=1)
    smtp_port: int = Field(25, ge=1, le=65535)
    from_addr: str = Field("accelpilot@localhost", pattern=r"^[^@\s]+@[^@\s]+$")
    starttls: bool = False
    user: str | None = None
    password: SecretStr | None = None

    @model_validator(mode="after")
    def _login_needs_password(self) -> EmailDestination:
        if self.user and self.password is None:
            raise ValueError("user is set but password is missing (both or neither)")
        if self.password is not None and not self.user:
            raise ValueError("password is set but user is missing (both or neither)")
        return self


Destination = Annotated[WebhookDestination | EmailDestination, Field(discriminator="type")]


class Filters(_Model):
    """Which alerts a subscription selects; every condition must hold.

    ``device_glob="*"`` also selects host-wide alerts (``device_id`` null); any other pattern
    needs a device id that matches. Likewise ``cluster_glob="*"`` also selects alerts of no known
    cluster (a v1 alert); any other pattern needs a cluster that matches. ``kinds`` empty selects
    every kind. Globs are case-sensitive :mod:`fnmatch` patterns.
    """

    min_severity: Severity = "info"
    cluster_glob: str = Field("*", min_length=1, max_length=200)
    host_glob: str = Field("*", min_length=1, max_length=200)
    device_glob: str = Field("*", min_length=1, max_length=200)
    kinds: tuple[Annotated[str, Field(min_length=1)], ...] = ()
    states: tuple[AlertState, ...] = Field(("firing", "resolved"), min_length=1)

    def matches(self, alert: Alert) -> bool:
        if SEVERITY_RANK[alert.severity] < SEVERITY_RANK[self.min_severity]:
            return False
        if alert.state not in self.states:
            return False
        if self.kinds and alert.kind not in self.kinds:
            return False
        if self.cluster_glob != "*" and not (
            alert.cluster is not None and fnmatch.fnmatchcase(alert.cluster, self.cluster_glob)
        ):
            return False
        if not fnmatch.fnmatchcase(alert.host_id, self.host_glob):
            return False
        if self.device_glob == "*":
            return True
        return alert.device_id is not None and fnmatch.fnmatchcase(
            alert.device_id, self.device_glob
        )


class Subscription(_Model):
    """One subscription. ``group_window_s``: alerts arriving within this many seconds of the
    first one of a group go out as one message (0 = one message per alert).
    ``rate_limit_per_min``: at most this many messages per rolling minute (0 = unlimited);
    alerts held back by the limit join the waiting message instead of being dropped."""

    id: str = Field(pattern=r"^sub-[0-9a-f]{8,32}$")
    name: str = Field(pattern=_NAME)
    destination: Destination
    filters: Filters = Filters()
    group_window_s: float = Field(0.0, ge=0, le=3600)
    rate_limit_per_min: int = Field(0, ge=0, le=10_000)
    created_ts: float = 0.0

    @classmethod
    def create(cls, **fields: Any) -> Subscription:
        """Validate plain data into a subscription (a fresh ``id`` unless given)."""
        fields.setdefault("id", f"sub-{uuid.uuid4().hex[:12]}")
        fields.setdefault("created_ts", time.time())
        return parse_subscription(fields)

    def public(self) -> dict[str, Any]:
        """Plain data safe to print: password masked, webhook URL redacted."""
        data: dict[str, Any] = self.model_dump(mode="json")
        dest = data["destination"]
        if dest["type"] == "webhook":
            dest["url"] = redact_url(dest["url"])
        elif dest.get("password") is not None:
            dest["password"] = "**********"
        return data

    def describe(self) -> str:
        """One line for humans: ``ops -> webhook(json) http://h/x [warning+, host gpu-*]``."""
        d = self.destination
        where = (
            f"webhook({d.format}) {redact_url(d.url)}"
            if isinstance(d, WebhookDestination)
            else f"email {', '.join(d.to)} via {d.smtp_host}:{d.smtp_port}"
        )
        f = self.filters
        conds = [f"{f.min_severity}+"]
        if f.cluster_glob != "*":
            conds.append(f"cluster {f.cluster_glob}")
        if f.host_glob != "*":
            conds.append(f"host {f.host_glob}")
        if f.device_glob != "*":
            conds.append(f"device {f.device_glob}")
        if f.kinds:
            conds.append("kinds " + ",".join(f.kinds))
        if set(f.states) != {"firing", "resolved"}:
            conds.append("states " + ",".join(f.states))
        if self.group_window_s:
            conds.append(f"group {self.group_window_s:g}s")
        if self.rate_limit_per_min:
            conds.append(f"max {self.rate_limit_per_min}/min")
        return f"{self.id} {self.name} -> {where} [{', '.join(conds)}]"


def parse_subscription(data: dict[str, Any]) -> Subscription:
    """Validate ``data`` or raise :class:`SubscriptionError` naming every bad field."""
    try:
        return Subscription.model_validate(data)
    except ValidationError as e:
        problems = []
        for item in e.errors():
            field = ".".join(str(p) for p in item["loc"] if p not in ("webhook", "email"))
            problems.append(f"field '{field or '(root)'}': {item['msg']}")
        raise SubscriptionError("invalid subscription: " + "; ".join(problems)) from e


def redact_url(url: str) -> str:
    """Scheme, host and first path segment only; the rest (often a token) becomes ``***``.

    >>> redact_url("https://hooks.slack.com/services/T0/B0/secret?x=1")
    'https://hooks.slack.com/services/***'
    >>> redact_url("http://user:pw@127.0.0.1:8080/hook")
    'http://127.0.0.1:8080/hook'
    """
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    segments = [s for s in parts.path.split("/") if s]
    path = f"/{segments[0]}" if segments else ""
    hidden = len(segments) > 1 or bool(parts.query) or bool(parts.fragment)
    return f"{parts.scheme}://{host}{path}{'/***' if hidden else ''}"


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """A message given up on: the alerts it carried and the last error from the destination."""

    id: int
    delivery_id: str
    subscription_id: str
    subscription_name: str
    dead_ts: float
    first_attempt_ts: float | None
    attempts: int
    last_error: str
    alerts: list[dict[str, Any]]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriptions (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, spec TEXT NOT NULL, created_ts REAL NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT, sub_id TEXT NOT NULL, opened_ts REAL NOT NULL,
    next_ts REAL NOT NULL, first_attempt_ts REAL, attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT, n_alerts INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS deliveries_by_sub ON deliveries (sub_id, id);
CREATE TABLE IF NOT EXISTS delivery_alerts (
    delivery_id INTEGER NOT NULL, seq INTEGER NOT NULL, alert BLOB NOT NULL,
    PRIMARY KEY (delivery_id, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen (
    sub_id TEXT NOT NULL, alert_id TEXT NOT NULL, state TEXT NOT NULL, ts REAL NOT NULL,
    PRIMARY KEY (sub_id, alert_id, state)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_by_ts ON seen (ts);
CREATE TABLE IF NOT EXISTS sends (sub_id TEXT NOT NULL, ts REAL NOT NULL);
CREATE INDEX IF NOT EXISTS sends_by_sub ON sends (sub_id, ts);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, delivery_id TEXT NOT NULL, sub_id TEXT NOT NULL,
    sub_name TEXT NOT NULL, dead_ts REAL NOT NULL, first_attempt_ts REAL,
    attempts INTEGER NOT NULL, last_error TEXT NOT NULL, alerts TEXT NOT NULL);
"""


class SubscriptionStore:
    """Subscriptions and the delivery queue in one SQLite file (WAL, safe across processes:
    the CLI edits subscriptions while the service runs). One service per file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SubscriptionError(
                    f"subscription store {self.path} has schema v{version}; this build reads "
                    f"v{SCHEMA_VERSION}: upgrade accelpilot or use another --store"
                )
            self.db.executescript(_SCHEMA)  # idempotent; executescript commits by itself
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as e:
            raise SubscriptionError(f"cannot open subscription store {self.path}: {e}") from e

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on error); nests as a no-op."""
        if self.db.in_transaction:
            yield self.db
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- subscriptions ---------------------------------------------------------------------------
    def add(self, sub: Subscription) -> Subscription:
        spec = sub.model_dump(mode="json")
        dest = spec["destination"]
        if isinstance(sub.destination, EmailDestination) and sub.destination.password:
            dest["password"] = sub.destination.password.get_secret_value()
        try:
            with self.transaction() as db:
                db.execute(
                    "INSERT INTO subscriptions (id, name, spec, created_ts) VALUES (?, ?, ?, ?)",
                    (sub.id, sub.name, json.dumps(spec), sub.created_ts),
                )
        except sqlite3.IntegrityError as e:
            raise SubscriptionError(
                f"field 'name': a subscription named {sub.name!r} (or id {sub.id}) already "
                "exists; remove it first or pick another name"
            ) from e
        return sub

    def list(self) -> builtins.list[Subscription]:
        rows = self.db.execute("SELECT spec FROM subscriptions ORDER BY created_ts, id")
        return [Subscription.model_validate_json(spec) for (spec,) in rows]

    def get(self, id_or_name: str) -> Subscription:
        row = self.db.execute(
            "SELECT spec FROM subscriptions WHERE id = ? OR name = ?", (id_or_name, id_or_name)
        ).fetchone()
        if row is None:
            raise SubscriptionError(
                f"no subscription with id or name {id_or_name!r}; see `accelpilot alerts list`"
            )
        return Subscription.model_validate_json(row[0])

    def remove(self, id_or_name: str) -> Subscription:
        """Remove a subscription and its pending deliveries (its dead letters stay)."""
        with self.transaction() as db:
            sub = self.get(id_or_name)
            db.execute(
                "DELETE FROM delivery_alerts WHERE delivery_id IN "
                "(SELECT id FROM deliveries WHERE sub_id = ?)",
                (sub.id,),
            )
            for table in ("deliveries", "seen", "sends"):
                db.execute(f"DELETE FROM {table} WHERE sub_id = ?", (sub.id,))
            db.execute("DELETE FROM subscriptions WHERE id = ?", (sub.id,))
        return sub

    # -- delivery state, read side -----------------------------------------------------------------
    def dead_letters(self, subscription: str | None = None) -> builtins.list[DeadLetterRecord]:
        """Dead letters, oldest first; ``subscription`` (id or name) narrows them."""
        sql = (
            "SELECT id, delivery_id, sub_id, sub_name, dead_ts, first_attempt_ts, attempts, "
            "last_error, alerts FROM dead_letters"
        )
        args: tuple[str, ...] = ()
        if subscription is not None:
            sql += " WHERE sub_id = ? OR sub_name = ?"
            args = (subscription, subscription)
        rows = self.db.execute(sql + " ORDER BY id", args).fetchall()
        return [
            DeadLetterRecord(
                id=r[0],
                delivery_id=r[1],
                subscription_id=r[2],
                subscription_name=r[3],
                dead_ts=r[4],
                first_attempt_ts=r[5],
                attempts=r[6],
                last_error=r[7],
                alerts=json.loads(r[8]),
            )
            for r in rows
        ]

    def pending_count(self) -> int:
        """Alerts waiting in undelivered messages (all subscriptions)."""
        row = self.db.execute("SELECT COALESCE(SUM(n_alerts), 0) FROM deliveries").fetchone()
        return int(row[0])

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> SubscriptionStore:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# -- the functions behind `accelpilot alerts subscribe / list / remove` ----------------------------
def subscribe(
    store_path: Path | str,
    *,
    name: str,
    webhook_url: str | None = None,
    webhook_format: str = "json",
    email_to: list[str] | tuple[str, ...] = (),
    smtp_host: str | None = None,
    smtp_port: int = 25,
    smtp_from: str = "accelpilot@localhost",
    smtp_starttls: bool = False,
    smtp_user: str | None = None,
    smtp_password: str | None = None,
    min_severity: str = "info",
    cluster_glob: str = "*",
    host_glob: str = "*",
    device_glob: str = "*",
    kinds: list[str] | tuple[str, ...] = (),
    states: list[str] | tuple[str, ...] = ("firing", "resolved"),
    group_window_s: float = 0.0,
    rate_limit_per_min: int = 0,
) -> Subscription:
    """Validate and store a subscription: exactly one of ``webhook_url`` or ``email_to``."""
    if bool(webhook_url) == bool(email_to):
        raise SubscriptionError(
            "field 'destination': give exactly one of a webhook URL (--webhook) or e-mail "
            "recipients (--email)"
        )
    destination: dict[str, Any]
    if webhook_url:
        destination = {"type": "webhook", "url": webhook_url, "format": webhook_format}
    else:
        destination = {
            "type": "email",
            "to": tuple(email_to),
            "smtp_host": smtp_host or "",
            "smtp_port": smtp_port,
            "from_addr": smtp_from,
            "starttls": smtp_starttls,
            "user": smtp_user,
            "password": smtp_password,
        }
    sub = Subscription.create(
        name=name,
        destination=destination,
        filters={
            "min_severity": min_severity,
            "cluster_glob": cluster_glob,
            "host_glob": host_glob,
            "device_glob": device_glob,
            "kinds": tuple(kinds),
            "states": tuple(states),
        },
        group_window_s=group_window_s,
        rate_limit_per_min=rate_limit_per_min,
    )
    with SubscriptionStore(store_path) as store:
        return store.add(sub)


def list_subscriptions(store_path: Path | str) -> list[dict[str, Any]]:
    """Every subscription as printable data (secrets masked), with its queue and dead letters."""
    with SubscriptionStore(store_path) as store:
        out = []
        for sub in store.list():
            data = sub.public()
            data["pending_alerts"] = store.db.execute(
                "SELECT COALESCE(SUM(n_alerts), 0) FROM deliveries WHERE sub_id = ?", (sub.id,)
            ).fetchone()[0]
            data["dead_letters"] = store.db.execute(
                "SELECT COUNT(*) FROM dead_letters WHERE sub_id = ?", (sub.id,)
            ).fetchone()[0]
            data["summary"] = sub.describe()
            out.append(data)
        return out


def remove_subscription(store_path: Path | str, id_or_name: str) -> Subscription:
    with SubscriptionStore(store_path) as store:
        return store.remove(id_or_name)


def list_dead_letters(
    store_path: Path | str, subscription: str | None = None
) -> list[dict[str, Any]]:
    """Dead letters as printable data (alert ids, not the full alerts), oldest first."""
    with SubscriptionStore(store_path) as store:
        return [
            {
                "id": d.id,
                "delivery_id": d.delivery_id,
                "subscription": d.subscription_name,
                "dead_ts": d.dead_ts,
                "attempts": d.attempts,
                "last_error": d.last_error,
                "alert_ids": [a["id"] for a in d.alerts],
            }
            for d in store.dead_letters(subscription)
        ]
