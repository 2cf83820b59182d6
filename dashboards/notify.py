"""The delivery engine of alert subscriptions: match, de-duplicate, group, rate-limit, send, retry.

``offer`` puts each alert into the open message (a *delivery*) of every subscription whose
filters select it, inside one SQLite transaction, so once ``offer`` returns nothing is lost across
a restart. ``pump`` sends the deliveries that are due. The rules:

- **De-duplication**: (subscription, alert id, state) is queued at most once, so an alert replayed
  from Kafka is not re-sent; keys are forgotten after ``dedup_ttl_s``.
- **Grouping**: a subscription's alerts arriving within ``group_window_s`` of the first one of a
  group go out as one message. Alerts also join a message that has not been tried yet because
  the rate limit or an earlier message in retry holds it back.
- **Order**: per subscription, messages go out oldest first; a later one waits while an earlier
  one is in retry (the destination is down for both anyway).
- **Rate limit**: at most ``rate_limit_per_min`` messages per rolling minute; held back, not
  dropped.
- **Retries**: a failed send is retried after ``min(cap, base * 2**(n-1))`` seconds minus up to
  ``jitter`` of it (honouring an HTTP ``Retry-After``), until ``max_attempts`` attempts or
  ``give_up_after_s`` since the first attempt; then the message becomes a *dead letter* in the
  store with the last error. Errors that cannot heal (HTTP 4xx but 408/429, SMTP 5xx, refused
  login) make it a dead letter at once.
- **At least once** towards the destination: a crash between a successful send and its record
  re-sends that message after restart. Receivers can de-duplicate on ``delivery_id`` (JSON),
  the e-mail ``Message-ID``, or the alert ids.
"""

from __future__ import annotations

import json
import logging
import random
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, Protocol

import msgspec

from accelpilot.dashboards.subscriptions import (
    SEVERITY_RANK,
    EmailDestination,
    Subscription,
    SubscriptionStore,
    WebhookDestination,
    redact_url,
)
from accelpilot.errors import AccelpilotError, ConfigError
from accelpilot.schemas import codec
from accelpilot.schemas.alerts import Alert

log = logging.getLogger(__name__)

MAX_ALERTS_PER_MESSAGE = 500
SLACK_MAX_ALERT_BLOCKS = 20
RATE_WINDOW_S = 60.0


class DeliveryError(AccelpilotError):
    """A destination did not take a message. ``permanent``: retrying cannot help.
    ``retry_after_s``: the destination asked to wait at least this long."""

    def __init__(
        self, message: str, *, permanent: bool = False, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_s: float = 2.0
    cap_s: float = 300.0
    jitter: float = 0.2  # the delay is shortened by up to this fraction, at random
    max_attempts: int = 12
    give_up_after_s: float = 3600.0

    def __post_init__(self) -> None:
        if not (0 < self.base_s <= self.cap_s and 0 <= self.jitter < 1 and self.max_attempts >= 1):
            raise ConfigError(
                f"bad retry policy {self}: need 0 < base_s <= cap_s, 0 <= jitter < 1, "
                "max_attempts >= 1"
            )

    def delay_s(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        full = min(self.cap_s, self.base_s * 2.0 ** (attempt - 1))
        return full * (1.0 - self.jitter * rng.random())


class HttpPost(Protocol):
    def __call__(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
    ) -> None: ...


class SmtpFactory(Protocol):
    def __call__(self, host: str, port: int, timeout_s: float) -> smtplib.SMTP: ...


def urllib_post(url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> None:
    """POST with urllib; any non-2xx answer or transport failure raises :class:`DeliveryError`."""
    req = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            resp.read(65536)
    except urllib.error.HTTPError as e:
        retry_after = _retry_after_s(e.headers.get("Retry-After")) if e.headers else None
        permanent = 400 <= e.code < 500 and e.code not in (408, 425, 429)
        raise DeliveryError(
            f"HTTP {e.code} {e.reason} from {redact_url(url)}",
            permanent=permanent,
            retry_after_s=retry_after,
        ) from e
    except (urllib.error.URLError, OSError) as e:
        why = getattr(e, "reason", e)
        raise DeliveryError(f"cannot reach {redact_url(url)}: {why}") from e


def _retry_after_s(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def smtp_connect(host: str, port: int, timeout_s: float) -> smtplib.SMTP:
    return smtplib.SMTP(host, port, timeout=timeout_s)


# -- rendering -------------------------------------------------------------------------------------
def _iso(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _where(a: Alert) -> str:
    where = f"{a.host_id}/{a.device_id}" if a.device_id else a.host_id
    return f"{where} in {a.cluster}" if a.cluster else where


def _evidence(a: Alert) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in a.evidence.items()) or "-"


def summarize(alerts: Sequence[Alert]) -> str:
    """``CRITICAL thermal, power: 3 alerts (2 firing, 1 resolved) on 2 hosts``.

    The leading word is the highest severity among firing alerts, or RESOLVED if none fires.
    """
    firing = [a for a in alerts if a.state == "firing"]
    level = (
        max((a.severity for a in firing), key=SEVERITY_RANK.__getitem__).upper()
        if firing
        else "RESOLVED"
    )
    kinds = sorted({a.kind for a in alerts})
    kind_text = ", ".join(kinds[:3]) + (f" +{len(kinds) - 3}" if len(kinds) > 3 else "")
    hosts = len({a.host_id for a in alerts})
    n = len(alerts)
    states = f" ({len(firing)} firing, {n - len(firing)} resolved)" if 0 < len(firing) < n else ""
    return (
        f"{level} {kind_text}: {n} alert{'s' if n != 1 else ''}{states} "
        f"on {hosts} host{'s' if hosts != 1 else ''}"
    )


def render_json(sub: Subscription, alerts: Sequence[Alert], delivery_id: str) -> bytes:
    """``{"v": 1, "delivery_id", "subscription": {"id", "name"}, "summary", "alerts": [...]}``;
    each alert exactly as in the ``fleet.alerts`` schema (v2, or v1 as it was received)."""
    return json.dumps(
        {
            "v": 1,
            "delivery_id": delivery_id,
            "subscription": {"id": sub.id, "name": sub.name},
            "summary": summarize(alerts),
            "alerts": [msgspec.to_builtins(a) for a in alerts],
        }
    ).encode()


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_slack(sub: Subscription, alerts: Sequence[Alert], delivery_id: str) -> bytes:
    """Slack incoming-webhook JSON: ``text`` (the notification line) and ``blocks``."""
    summary = summarize(alerts)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": summary[:150]}}
    ]
    for a in alerts[:SLACK_MAX_ALERT_BLOCKS]:
        text = (
            f"*{a.severity.upper()}* `{_slack_escape(a.kind)}` {a.state} on "
            f"*{_slack_escape(_where(a))}* since {_iso(a.started_ts_ns)}\n"
            f"{_slack_escape(a.reason)}\n_evidence:_ {_slack_escape(_evidence(a))}"
            f" · id `{_slack_escape(a.id)}`"
        )
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}})
    more = len(alerts) - SLACK_MAX_ALERT_BLOCKS
    footer = f"subscription {sub.name} · delivery {delivery_id}"
    if more > 0:
        footer = f"… and {more} more alert{'s' if more != 1 else ''} · " + footer
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": footer}]})
    return json.dumps({"text": f"[accelpilot] {summary}", "blocks": blocks}).encode()


def render_email(
    sub: Subscription, dest: EmailDestination, alerts: Sequence[Alert], delivery_id: str
) -> EmailMessage:
    """Subject with severity, kinds and counts; a plain-text body with every alert in full."""
    msg = EmailMessage()
    msg["Subject"] = f"[accelpilot] {summarize(alerts)}"
    msg["From"] = dest.from_addr
    msg["To"] = ", ".join(dest.to)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = f"<{delivery_id}@accelpilot>"  # the same on every retry
    lines = [f"{summarize(alerts)}", f"subscription {sub.name} ({sub.id}), delivery {delivery_id}"]
    for a in alerts:
        lines += [
            "",
            f"[{a.severity.upper()}] {a.kind} {a.state} on {_where(a)}",
            f"  since: {_iso(a.started_ts_ns)}   at: {_iso(a.ts_ns)}",
            f"  reason: {a.reason}",
            f"  evidence: {_evidence(a)}",
        ]
        if a.metric:
            lines.append(f"  metric: {a.metric}")
        lines.append(f"  id: {a.id}")
    msg.set_content("\n".join(lines) + "\n")
    return msg


# -- the engine ------------------------------------------------------------------------------------
@dataclass(slots=True)
class OfferReport:
    queued: int = 0  # (alert, subscription) pairs put into a delivery
    duplicates: int = 0  # pairs seen before (replays)
    unmatched: int = 0  # alerts no subscription selects


@dataclass(slots=True)
class PumpReport:
    sent: int = 0
    failed: int = 0  # attempts that failed and will be retried
    dead: int = 0
    rate_limited: int = 0


@dataclass(frozen=True, slots=True)
class _Delivery:
    id: int
    sub_id: str
    attempts: int
    first_attempt_ts: float | None

    @property
    def public_id(self) -> str:
        return f"{self.sub_id}-{self.id}"


class Notifier:
    """Deliver alerts to the subscriptions of ``store``. Not thread-safe: one thread drives it."""

    def __init__(
        self,
        store: SubscriptionStore,
        *,
        clock: Callable[[], float] = time.time,
        http_post: HttpPost = urllib_post,
        smtp_factory: SmtpFactory = smtp_connect,
        retry: RetryPolicy = RetryPolicy(),
        rng: random.Random | None = None,
        http_timeout_s: float = 10.0,
        smtp_timeout_s: float = 10.0,
        dedup_ttl_s: float = 7 * 86400.0,
    ) -> None:
        self.store = store
        self.db = store.db
        self.clock = clock
        self.http_post = http_post
        self.smtp_factory = smtp_factory
        self.retry = retry
        self.rng = rng or random.Random()
        self.http_timeout_s = http_timeout_s
        self.smtp_timeout_s = smtp_timeout_s
        self.dedup_ttl_s = dedup_ttl_s
        self._last_prune = float("-inf")

    # -- intake ------------------------------------------------------------------------------------
    def offer(self, alert: Alert) -> OfferReport:
        return self.offer_many([alert])

    def offer_many(self, alerts: Iterable[Alert]) -> OfferReport:
        """Queue ``alerts`` for every subscription that selects them; durable on return."""
        report = OfferReport()
        now = self.clock()
        with self.store.transaction() as db:
            subs = self.store.list()
            for alert in alerts:
                matched = [s for s in subs if s.filters.matches(alert)]
                if not matched:
                    report.unmatched += 1
                for sub in matched:
                    fresh = db.execute(
                        "INSERT OR IGNORE INTO seen (sub_id, alert_id, state, ts) "
                        "VALUES (?, ?, ?, ?)",
                        (sub.id, alert.id, alert.state, now),
                    ).rowcount
                    if not fresh:
                        report.duplicates += 1
                        continue
                    self._enqueue(db, sub, alert, now)
                    report.queued += 1
        return report

    def _enqueue(self, db: Any, sub: Subscription, alert: Alert, now: float) -> None:
        rows = db.execute(
            "SELECT id, attempts, next_ts, n_alerts FROM deliveries WHERE sub_id = ? ORDER BY id",
            (sub.id,),
        ).fetchall()
        delivery_id: int | None = None
        if rows:
            tail_id, attempts, next_ts, n_alerts = rows[-1]
            # Open until first tried: within its window, or held by the rate limit (next_ts
            # pushed on), or queued behind an earlier message that is in retry.
            waiting = now < next_ts or len(rows) > 1
            if attempts == 0 and waiting and n_alerts < MAX_ALERTS_PER_MESSAGE:
                delivery_id = tail_id
        if delivery_id is None:
            delivery_id = db.execute(
                "INSERT INTO deliveries (sub_id, opened_ts, next_ts) VALUES (?, ?, ?)",
                (sub.id, now, now + sub.group_window_s),
            ).lastrowid
        seq = db.execute(
            "UPDATE deliveries SET n_alerts = n_alerts + 1 WHERE id = ? RETURNING n_alerts",
            (delivery_id,),
        ).fetchone()[0]
        db.execute(
            "INSERT INTO delivery_alerts (delivery_id, seq, alert) VALUES (?, ?, ?)",
            (delivery_id, seq, codec.encode(alert)),
        )

    # -- output ------------------------------------------------------------------------------------
    def next_due_ts(self) -> float | None:
        """When the earliest waiting message is due (clock seconds), None if nothing waits."""
        row = self.db.execute(
            "SELECT MIN(next_ts) FROM deliveries WHERE id IN "
            "(SELECT MIN(id) FROM deliveries GROUP BY sub_id)"
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def pump(self, *, budget_s: float = 30.0) -> PumpReport:
        """Send every message that is due, oldest first per subscription; stop after about
        ``budget_s`` seconds of real time so a slow destination cannot stall the consumer."""
        report = PumpReport()
        started = time.monotonic()
        self._prune(self.clock())
        while time.monotonic() - started < budget_s:
            now = self.clock()
            heads = self.db.execute(
                "SELECT id, sub_id, attempts, first_attempt_ts FROM deliveries WHERE id IN "
                "(SELECT MIN(id) FROM deliveries GROUP BY sub_id) AND next_ts <= ? "
                "ORDER BY next_ts, id",
                (now,),
            ).fetchall()
            if not heads:
                break
            subs = {s.id: s for s in self.store.list()}
            for row in heads:
                delivery = _Delivery(*row)
                sub = subs.get(delivery.sub_id)
                if sub is None:  # removed while its message waited
                    self._delete(delivery.id)
                    continue
                self._attempt(sub, delivery, self.clock(), report)
                if time.monotonic() - started >= budget_s:
                    break
        return report

    def _attempt(
        self, sub: Subscription, delivery: _Delivery, now: float, report: PumpReport
    ) -> None:
        if sub.rate_limit_per_min:
            n, oldest = self.db.execute(
                "SELECT COUNT(*), MIN(ts) FROM sends WHERE sub_id = ? AND ts > ?",
                (sub.id, now - RATE_WINDOW_S),
            ).fetchone()
            if n >= sub.rate_limit_per_min:
                self.db.execute(
                    "UPDATE deliveries SET next_ts = ? WHERE id = ?",
                    (oldest + RATE_WINDOW_S, delivery.id),
                )
                report.rate_limited += 1
                return
        alerts = self._alerts_of(delivery.id)
        try:
            self._send(sub, alerts, delivery.public_id)
        except DeliveryError as e:
            self._failed(sub, delivery, alerts, e, now, report)
            return
        with self.store.transaction() as db:
            self._delete(delivery.id)
            db.execute("INSERT INTO sends (sub_id, ts) VALUES (?, ?)", (sub.id, now))
        report.sent += 1
        log.info("delivered %d alert(s) to %s (%s)", len(alerts), sub.name, delivery.public_id)

    def _failed(
        self,
        sub: Subscription,
        delivery: _Delivery,
        alerts: list[Alert],
        err: DeliveryError,
        now: float,
        report: PumpReport,
    ) -> None:
        attempts = delivery.attempts + 1
        first = delivery.first_attempt_ts if delivery.first_attempt_ts is not None else now
        give_up = (
            err.permanent
            or attempts >= self.retry.max_attempts
            or now - first >= self.retry.give_up_after_s
        )
        if give_up:
            with self.store.transaction() as db:
                db.execute(
                    "INSERT INTO dead_letters (delivery_id, sub_id, sub_name, dead_ts, "
                    "first_attempt_ts, attempts, last_error, alerts) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        delivery.public_id,
                        sub.id,
                        sub.name,
                        now,
                        first,
                        attempts,
                        str(err),
                        json.dumps([msgspec.to_builtins(a) for a in alerts]),
                    ),
                )
                self._delete(delivery.id)
            report.dead += 1
            log.error(
                "gave up on %s for %s after %d attempt(s): %s (dead letter kept)",
                delivery.public_id,
                sub.name,
                attempts,
                err,
            )
            return
        delay = self.retry.delay_s(attempts, self.rng)
        if err.retry_after_s is not None:
            delay = max(delay, min(err.retry_after_s, self.retry.cap_s))
        self.db.execute(
            "UPDATE deliveries SET attempts = ?, first_attempt_ts = ?, last_error = ?, "
            "next_ts = ? WHERE id = ?",
            (attempts, first, str(err), now + delay, delivery.id),
        )
        report.failed += 1
        log.warning(
            "delivery %s to %s failed (attempt %d), retry in %.1f s: %s",
            delivery.public_id,
            sub.name,
            attempts,
            delay,
            err,
        )

    def _send(self, sub: Subscription, alerts: list[Alert], delivery_id: str) -> None:
        dest = sub.destination
        if isinstance(dest, WebhookDestination):
            render = render_slack if dest.format == "slack" else render_json
            body = render(sub, alerts, delivery_id)
            headers = {"Content-Type": "application/json", "User-Agent": "accelpilot-alerts"}
            self.http_post(dest.url, body, headers, self.http_timeout_s)
        else:
            self._send_email(dest, render_email(sub, dest, alerts, delivery_id))

    def _send_email(self, dest: EmailDestination, msg: EmailMessage) -> None:
        where = f"SMTP {dest.smtp_host}:{dest.smtp_port}"
        try:
            with self.smtp_factory(dest.smtp_host, dest.smtp_port, self.smtp_timeout_s) as smtp:
                if dest.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if dest.user and dest.password is not None:
                    smtp.login(dest.user, dest.password.get_secret_value())
                refused = smtp.send_message(msg)
        except smtplib.SMTPAuthenticationError as e:
            raise DeliveryError(f"{where} refused the login: {e.smtp_code}", permanent=True) from e
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused) as e:
            raise DeliveryError(f"{where} refused the addresses: {e}", permanent=True) from e
        except smtplib.SMTPResponseException as e:
            raise DeliveryError(
                f"{where} answered {e.smtp_code} {e.smtp_error!r}", permanent=e.smtp_code >= 500
            ) from e
        except (smtplib.SMTPException, OSError) as e:
            raise DeliveryError(f"cannot deliver through {where}: {e}") from e
        if refused:
            log.warning("%s refused some recipients: %s", where, sorted(refused))

    # -- queue housekeeping ------------------------------------------------------------------------
    def _alerts_of(self, delivery_id: int) -> list[Alert]:
        rows = self.db.execute(
            "SELECT alert FROM delivery_alerts WHERE delivery_id = ? ORDER BY seq", (delivery_id,)
        )
        return [codec.decode(Alert, raw) for (raw,) in rows]

    def _delete(self, delivery_id: int) -> None:
        with self.store.transaction() as db:
            db.execute("DELETE FROM delivery_alerts WHERE delivery_id = ?", (delivery_id,))
            db.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,))

    def _prune(self, now: float) -> None:
        if now - self._last_prune < RATE_WINDOW_S:
            return
        with self.store.transaction() as db:
            db.execute("DELETE FROM sends WHERE ts <= ?", (now - RATE_WINDOW_S,))
            db.execute("DELETE FROM seen WHERE ts <= ?", (now - self.dedup_ttl_s,))
        self._last_prune = now
