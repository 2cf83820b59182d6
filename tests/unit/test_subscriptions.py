"""Alert subscriptions: filters, grouping, rate limits, de-duplication, retries, dead letters,
durability, validation and rendering, all with an injected clock and injected senders."""

from __future__ import annotations

import email
import json
import os
import random
import signal
import smtplib
import threading
from collections.abc import Iterator, Mapping
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest

from accelpilot.dashboards.alert_service import _install_signals
from accelpilot.dashboards.notify import (
    DeliveryError,
    Notifier,
    RetryPolicy,
    render_email,
    render_json,
    render_slack,
    summarize,
    urllib_post,
)
from accelpilot.dashboards.subscriptions import (
    EmailDestination,
    Filters,
    Subscription,
    SubscriptionError,
    SubscriptionStore,
    list_dead_letters,
    list_subscriptions,
    remove_subscription,
    subscribe,
)
from accelpilot.errors import ConfigError
from accelpilot.schemas import codec
from accelpilot.schemas.alerts import Alert

T0 = 1_700_000_000.0


def make_alert(
    aid: str,
    *,
    kind: str = "thermal",
    severity: str = "warning",
    state: str = "firing",
    host: str = "gpu-a1",
    device: str | None = "gpu0",
    reason: str = "temperature above limit",
    evidence: dict[str, float] | None = None,
    cluster: str | None = None,
) -> Alert:
    return Alert(
        id=aid,
        kind=kind,
        severity=severity,  # type: ignore[arg-type]
        state=state,  # type: ignore[arg-type]
        host_id=host,
        device_id=device,
        ts_ns=int(T0 * 1e9) + 5,
        started_ts_ns=int(T0 * 1e9),
        metric="temp_c",
        reason=reason,
        evidence={"temp_c": 93.5, "limit_c": 90.0} if evidence is None else evidence,
        cluster=cluster,
    )


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, s: float) -> None:
        self.now += s


class FakeHttp:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.error: DeliveryError | None = None
        self.attempts = 0

    def __call__(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> None:
        self.attempts += 1
        if self.error is not None:
            raise self.error
        self.calls.append((url, json.loads(body), dict(headers)))

    def ids(self) -> list[list[str]]:
        return [[a["id"] for a in body["alerts"]] for _, body, _ in self.calls]


class FakeSmtp:
    """Stands in for smtplib.SMTP: records the conversation."""

    def __init__(self) -> None:
        self.sent: list[EmailMessage] = []
        self.log: list[tuple[str, ...]] = []
        self.error: Exception | None = None

    def __call__(self, host: str, port: int, timeout_s: float) -> FakeSmtp:
        self.log.append(("connect", host, str(port)))
        return self

    def __enter__(self) -> FakeSmtp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.log.append(("quit",))

    def starttls(self, context: object = None) -> None:
        self.log.append(("starttls",))

    def login(self, user: str, password: str) -> None:
        self.log.append(("login", user, password))

    def send_message(self, msg: EmailMessage) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        self.sent.append(msg)
        return {}


class FixedRandom(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SubscriptionStore]:
    with SubscriptionStore(tmp_path / "subs.sqlite") as s:
        yield s


def webhook(name: str = "hook", *, fmt: str = "json", **kw: Any) -> Subscription:
    filters = kw.pop("filters", {})
    return Subscription.create(
        name=name,
        destination={"type": "webhook", "url": f"http://127.0.0.1:9/{name}", "format": fmt},
        filters=filters,
        **kw,
    )


def notifier(store: SubscriptionStore, **kw: Any) -> tuple[Notifier, Clock, FakeHttp]:
    clock, http = Clock(), FakeHttp()
    kw.setdefault("retry", RetryPolicy(base_s=1, cap_s=8, jitter=0, max_attempts=5))
    return Notifier(store, clock=clock, http_post=http, **kw), clock, http


# -- filters ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("filters", "alert", "selected"),
    [
        ({"min_severity": "warning"}, make_alert("a", severity="info"), False),
        ({"min_severity": "warning"}, make_alert("a", severity="warning"), True),
        ({"min_severity": "warning"}, make_alert("a", severity="critical"), True),
        ({"min_severity": "critical"}, make_alert("a", severity="warning"), False),
        ({"host_glob": "gpu-a*"}, make_alert("a", host="gpu-a17"), True),
        ({"host_glob": "gpu-a*"}, make_alert("a", host="gpu-b1"), False),
        ({"host_glob": "gpu-?1"}, make_alert("a", host="gpu-b1"), True),
        ({"host_glob": "GPU-*"}, make_alert("a", host="gpu-b1"), False),  # case-sensitive
        ({"device_glob": "*1"}, make_alert("a", device="gpu1"), True),
        ({"device_glob": "*1"}, make_alert("a", device="gpu0"), False),
        ({"device_glob": "*1"}, make_alert("a", device=None), False),  # host-wide alert
        ({"device_glob": "*"}, make_alert("a", device=None), True),
        ({"cluster_glob": "eu-*"}, make_alert("a", cluster="eu-west"), True),
        ({"cluster_glob": "eu-*"}, make_alert("a", cluster="us-east"), False),
        ({"cluster_glob": "eu-*"}, make_alert("a", cluster=None), False),  # a v1 alert
        ({"cluster_glob": "*"}, make_alert("a", cluster=None), True),
        ({"kinds": ["thermal", "power"]}, make_alert("a", kind="power"), True),
        ({"kinds": ["thermal", "power"]}, make_alert("a", kind="ecc"), False),
        ({"kinds": []}, make_alert("a", kind="ecc"), True),
        ({"states": ["firing"]}, make_alert("a", state="resolved"), False),
        ({"states": ["resolved"]}, make_alert("a", state="resolved"), True),
        (
            {"min_severity": "warning", "host_glob": "gpu-a*", "kinds": ["thermal"]},
            make_alert("a", severity="critical", host="gpu-a2", kind="power"),
            False,
        ),
    ],
)
def test_filters_select_exactly_what_they_say(
    filters: dict[str, Any], alert: Alert, selected: bool
) -> None:
    assert Filters.model_validate(filters).matches(alert) is selected


def test_offer_queues_only_for_matching_subscriptions(store: SubscriptionStore) -> None:
    store.add(webhook("warn", filters={"min_severity": "warning"}))
    store.add(webhook("crit", filters={"min_severity": "critical"}))
    n, _, http = notifier(store)
    report = n.offer_many(
        [make_alert("i", severity="info"), make_alert("w"), make_alert("c", severity="critical")]
    )
    assert (report.queued, report.unmatched) == (3, 1)
    assert n.pump().sent == 3
    pairs = zip(http.calls, http.ids(), strict=True)
    got = sorted((url.rsplit("/", 1)[1], ids) for (url, _, _), ids in pairs)
    assert got == [("crit", ["c"]), ("warn", ["c"]), ("warn", ["w"])]


# -- grouping --------------------------------------------------------------------------------------
def test_alerts_within_the_window_go_out_as_one_message(store: SubscriptionStore) -> None:
    store.add(webhook(group_window_s=10))
    n, clock, http = notifier(store)
    n.offer(make_alert("a1"))
    clock.advance(5)
    n.offer(make_alert("a2"))
    assert n.pump().sent == 0  # the window is still open
    assert n.next_due_ts() == T0 + 10
    clock.advance(5)
    n.offer(make_alert("a3"))  # exactly at the window's end: a new group
    assert n.pump().sent == 1
    assert http.ids() == [["a1", "a2"]]
    clock.advance(10)
    assert n.pump().sent == 1
    assert http.ids() == [["a1", "a2"], ["a3"]]


def test_zero_window_sends_one_message_per_alert(store: SubscriptionStore) -> None:
    store.add(webhook())
    n, _, http = notifier(store)
    n.offer_many([make_alert("a1"), make_alert("a2")])
    assert n.pump().sent == 2
    assert http.ids() == [["a1"], ["a2"]]


# -- rate limit ------------------------------------------------------------------------------------
def test_rate_limit_holds_messages_back_and_merges_them(store: SubscriptionStore) -> None:
    store.add(webhook(rate_limit_per_min=2))
    n, clock, http = notifier(store)
    for i in range(5):
        n.offer(make_alert(f"a{i}"))
        n.pump()
        clock.advance(1)
    # Two messages in the first minute; the other three alerts wait together, none is lost.
    assert http.ids() == [["a0"], ["a1"]]
    assert n.next_due_ts() == T0 + 60
    clock.now = T0 + 59.9
    assert n.pump().sent == 0
    clock.now = T0 + 60
    assert n.pump().sent == 1
    assert http.ids()[2] == ["a2", "a3", "a4"]


# -- de-duplication --------------------------------------------------------------------------------
def test_replayed_alert_is_not_sent_again_but_its_resolution_is(store: SubscriptionStore) -> None:
    store.add(webhook())
    n, _, http = notifier(store)
    assert n.offer(make_alert("a1")).queued == 1
    n.pump()
    report = n.offer(make_alert("a1"))  # the same (id, state), e.g. replayed from Kafka
    assert (report.queued, report.duplicates) == (0, 1)
    assert n.offer(make_alert("a1", state="resolved")).queued == 1
    n.pump()
    assert http.ids() == [["a1"], ["a1"]]
    assert [b["alerts"][0]["state"] for _, b, _ in http.calls] == ["firing", "resolved"]


def test_deduplication_survives_a_restart_and_expires(tmp_path: Path) -> None:
    path = tmp_path / "subs.sqlite"
    with SubscriptionStore(path) as store:
        store.add(webhook())
        n, _, _ = notifier(store, dedup_ttl_s=3600)
        n.offer(make_alert("a1"))
        n.pump()
    with SubscriptionStore(path) as store:
        n, clock, _ = notifier(store, dedup_ttl_s=3600)
        assert n.offer(make_alert("a1")).duplicates == 1
        clock.advance(3601)
        n.pump()  # prunes expired keys
        assert n.offer(make_alert("a1")).queued == 1


# -- retries, backoff, dead letters ----------------------------------------------------------------
def test_backoff_doubles_up_to_the_cap_without_sleeping(store: SubscriptionStore) -> None:
    store.add(webhook())
    n, clock, http = notifier(
        store, retry=RetryPolicy(base_s=1, cap_s=8, jitter=0, max_attempts=100)
    )
    http.error = DeliveryError("connection refused")
    n.offer(make_alert("a1"))
    gaps = []
    for _ in range(7):
        assert n.pump().failed == 1
        due = n.next_due_ts()
        assert due is not None
        gaps.append(due - clock.now)
        clock.now = due - 0.01
        assert n.pump().failed == 0  # not due yet: no attempt
        clock.now = due
    assert gaps == [1, 2, 4, 8, 8, 8, 8]
    assert http.attempts == 7
    http.error = None
    assert n.pump().sent == 1
    assert http.ids() == [["a1"]]


def test_jitter_shortens_the_delay_by_at_most_its_fraction(store: SubscriptionStore) -> None:
    policy = RetryPolicy(base_s=2, cap_s=100, jitter=0.25)
    assert policy.delay_s(3, FixedRandom(0.0)) == 8.0
    assert policy.delay_s(3, FixedRandom(0.5)) == 7.0
    rng = random.Random(7)
    delays = [policy.delay_s(10, rng) for _ in range(200)]
    assert all(75 <= d <= 100 for d in delays) and len(set(delays)) > 100
    with pytest.raises(ConfigError, match="retry policy"):
        RetryPolicy(base_s=0)


def test_retry_after_from_the_destination_is_honoured(store: SubscriptionStore) -> None:
    store.add(webhook())
    n, clock, http = notifier(store)
    http.error = DeliveryError("HTTP 429", retry_after_s=6)
    n.offer(make_alert("a1"))
    n.pump()
    assert n.next_due_ts() == clock.now + 6


def test_gives_up_after_max_attempts_and_keeps_a_dead_letter(store: SubscriptionStore) -> None:
    sub = store.add(webhook())
    n, clock, http = notifier(store)  # max_attempts=5
    http.error = DeliveryError("cannot reach http://127.0.0.1:9/hook: connection refused")
    n.offer_many([make_alert("a1")])
    dead = 0
    for _ in range(10):
        report = n.pump()
        dead += report.dead
        clock.now = n.next_due_ts() or clock.now
    assert dead == 1 and http.attempts == 5
    (letter,) = store.dead_letters()
    assert letter.subscription_id == sub.id and letter.subscription_name == "hook"
    assert letter.attempts == 5 and "connection refused" in letter.last_error
    assert letter.first_attempt_ts == T0
    assert [a["id"] for a in letter.alerts] == ["a1"]
    assert codec.decode(Alert, json.dumps(letter.alerts[0]).encode()) == make_alert("a1")
    assert store.pending_count() == 0
    (shown,) = list_dead_letters(store.path, "hook")
    assert shown["alert_ids"] == ["a1"] and shown["attempts"] == 5
    # The destination is back: later alerts flow again.
    http.error = None
    n.offer(make_alert("a2"))
    assert n.pump().sent == 1


def test_gives_up_after_the_time_limit(store: SubscriptionStore) -> None:
    store.add(webhook())
    retry = RetryPolicy(base_s=10, cap_s=10, jitter=0, max_attempts=1000, give_up_after_s=30)
    n, clock, http = notifier(store, retry=retry)
    http.error = DeliveryError("HTTP 503")
    n.offer(make_alert("a1"))
    for expect_dead in (0, 0, 0, 1):  # attempts at T0, +10, +20, +30
        assert n.pump().dead == expect_dead
        clock.advance(10)
    assert store.dead_letters()[0].attempts == 4


def test_permanent_error_is_a_dead_letter_at_once(store: SubscriptionStore) -> None:
    store.add(webhook())
    n, _, http = notifier(store)
    http.error = DeliveryError("HTTP 404 Not Found", permanent=True)
    n.offer(make_alert("a1"))
    assert n.pump().dead == 1
    assert store.dead_letters("hook")[0].attempts == 1


def test_messages_keep_order_and_alerts_gather_while_one_is_retried(
    store: SubscriptionStore,
) -> None:
    store.add(webhook())
    n, clock, http = notifier(store)
    http.error = DeliveryError("down")
    n.offer(make_alert("a1"))
    n.pump()  # a1 in retry
    for i in range(2, 6):
        clock.advance(0.1)
        n.offer(make_alert(f"a{i}"))
        n.pump()
    assert http.attempts == 1  # the later message waits behind the first one
    http.error = None
    clock.advance(10)
    assert n.pump().sent == 2
    assert http.ids() == [["a1"], ["a2", "a3", "a4", "a5"]]


# -- durability ------------------------------------------------------------------------------------
def test_pending_deliveries_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "subs.sqlite"
    with SubscriptionStore(path) as store:
        store.add(webhook(group_window_s=30))
        n, _, http = notifier(store)
        n.offer_many([make_alert("a1"), make_alert("a2")])
        n.pump()
        assert http.calls == [] and store.pending_count() == 2
    with SubscriptionStore(path) as store:
        n, clock, http = notifier(store)
        clock.advance(30)
        assert n.pump().sent == 1
        assert http.ids() == [["a1", "a2"]]


def test_store_keeps_subscriptions_and_secrets_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "subs.sqlite"
    sub = subscribe(
        path,
        name="mail",
        email_to=["ops@example.com"],
        smtp_host="smtp.example.com",
        smtp_port=587,
        smtp_starttls=True,
        smtp_user="bot",
        smtp_password="hunter2",
        kinds=["thermal"],
    )
    assert path.stat().st_mode & 0o077 == 0  # the file holds a secret: owner only
    with SubscriptionStore(path) as store:
        (again,) = store.list()
        assert again == sub
        assert store.get("mail") == store.get(sub.id) == sub
        assert isinstance(again.destination, EmailDestination)
        assert again.destination.password is not None
        assert again.destination.password.get_secret_value() == "hunter2"
    assert remove_subscription(path, "mail").id == sub.id
    with SubscriptionStore(path) as store:
        assert store.list() == []


def test_removing_a_subscription_drops_its_pending_messages(store: SubscriptionStore) -> None:
    store.add(webhook(group_window_s=30))
    n, clock, http = notifier(store)
    n.offer(make_alert("a1"))
    store.remove("hook")
    clock.advance(60)
    assert n.pump().sent == 0 and http.attempts == 0 and store.pending_count() == 0


# -- validation and secrets ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "has space", "webhook_url": "http://h/x"}, "name"),
        ({"name": "h", "webhook_url": "ftp://h/x"}, "destination.url"),
        ({"name": "h", "webhook_url": "http://h/x", "webhook_format": "teams"}, "format"),
        ({"name": "h", "webhook_url": "http://h/x", "min_severity": "fatal"}, "min_severity"),
        ({"name": "h", "webhook_url": "http://h/x", "states": ["open"]}, "filters.states"),
        ({"name": "h", "webhook_url": "http://h/x", "states": []}, "filters.states"),
        ({"name": "h", "webhook_url": "http://h/x", "host_glob": ""}, "filters.host_glob"),
        ({"name": "h", "webhook_url": "http://h/x", "group_window_s": -1}, "group_window_s"),
        ({"name": "h", "webhook_url": "http://h/x", "rate_limit_per_min": -2}, "rate_limit"),
        ({"name": "m", "email_to": ["not-an-address"], "smtp_host": "s"}, "destination.to"),
        ({"name": "m", "email_to": ["a@b"], "smtp_host": ""}, "destination.smtp_host"),
        ({"name": "m", "email_to": ["a@b"], "smtp_host": "s", "smtp_port": 0}, "smtp_port"),
        ({"name": "m", "email_to": ["a@b"], "smtp_host": "s", "smtp_user": "u"}, "password"),
        ({"name": "m"}, "destination"),
        ({"name": "m", "webhook_url": "http://h/x", "email_to": ["a@b"]}, "destination"),
    ],
)
def test_invalid_subscriptions_are_refused_naming_the_field(
    tmp_path: Path, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(SubscriptionError, match=field):
        subscribe(tmp_path / "s.sqlite", **kwargs)
    with SubscriptionStore(tmp_path / "s.sqlite") as store:
        assert store.list() == []


def test_duplicate_names_and_unknown_ids_are_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    subscribe(path, name="h", webhook_url="http://h/x")
    with pytest.raises(SubscriptionError, match=r"'h' .*already exists"):
        subscribe(path, name="h", webhook_url="http://h/y")
    with pytest.raises(SubscriptionError, match="no subscription with id or name 'nope'"):
        remove_subscription(path, "nope")


def test_secrets_are_never_printed(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    token_url = "https://hooks.slack.com/services/T0001/B0002/SeCrEtToKeN"
    slack = subscribe(path, name="slack", webhook_url=token_url, webhook_format="slack")
    mail = subscribe(
        path, name="m", email_to=["a@b.c"], smtp_host="s", smtp_user="u", smtp_password="pw-XYZ"
    )
    shown = json.dumps(list_subscriptions(path)) + repr(mail) + str(mail) + mail.describe()
    shown += slack.describe() + repr(mail.public())
    assert "pw-XYZ" not in shown and "SeCrEtToKeN" not in shown
    assert "https://hooks.slack.com/services/***" in shown and "**********" in shown
    listed = {d["name"]: d for d in list_subscriptions(path)}
    assert listed["m"]["pending_alerts"] == 0 and listed["m"]["dead_letters"] == 0
    assert listed["slack"]["summary"].startswith(f"{slack.id} slack -> webhook(slack)")


def test_a_newer_store_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    SubscriptionStore(path).close()
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=99")
    with pytest.raises(SubscriptionError, match="schema v99"):
        SubscriptionStore(path)


# -- rendering -------------------------------------------------------------------------------------
ALERTS = [
    make_alert("t1", severity="critical", host="gpu-a1", device="gpu1"),
    make_alert("t2", severity="warning", host="gpu-a2", device=None, kind="power"),
    make_alert("t3", state="resolved", host="gpu-a1", reason="back to <normal> & calm"),
]


def test_generic_json_carries_the_alerts_exactly_as_in_the_schema() -> None:
    sub = webhook()
    body = json.loads(render_json(sub, ALERTS, "sub-x-1"))
    assert body["v"] == 1 and body["delivery_id"] == "sub-x-1"
    assert body["subscription"] == {"id": sub.id, "name": "hook"}
    assert body["alerts"] == [msgspec.to_builtins(a) for a in ALERTS]
    assert [codec.decode(Alert, json.dumps(a).encode()) for a in body["alerts"]] == ALERTS
    assert body["summary"] == summarize(ALERTS)


def test_summary_names_severity_kinds_and_counts() -> None:
    assert summarize(ALERTS) == (
        "CRITICAL power, thermal: 3 alerts (2 firing, 1 resolved) on 2 hosts"
    )
    assert summarize(ALERTS[2:]) == "RESOLVED thermal: 1 alert on 1 host"


def test_slack_message_has_text_and_blocks_and_escapes() -> None:
    body = json.loads(render_slack(webhook(fmt="slack"), ALERTS, "sub-x-1"))
    assert body["text"] == "[accelpilot] " + summarize(ALERTS)
    header, *sections, footer = body["blocks"]
    assert header["type"] == "header" and header["text"]["type"] == "plain_text"
    assert [s["type"] for s in sections] == ["section"] * 3
    assert "*CRITICAL* `thermal` firing on *gpu-a1/gpu1*" in sections[0]["text"]["text"]
    assert "temp_c=93.5, limit_c=90" in sections[0]["text"]["text"]
    assert "back to &lt;normal&gt; &amp; calm" in sections[2]["text"]["text"]
    assert footer["type"] == "context"
    many = [make_alert(f"m{i}") for i in range(25)]
    blocks = json.loads(render_slack(webhook(fmt="slack"), many, "d"))["blocks"]
    assert len(blocks) == 1 + 20 + 1 and "and 5 more alerts" in blocks[-1]["elements"][0]["text"]


def test_email_has_a_telling_subject_and_every_reason_and_evidence() -> None:
    sub = Subscription.create(
        name="mail",
        destination={"type": "email", "to": ["a@x.org", "b@x.org"], "smtp_host": "s"},
    )
    assert isinstance(sub.destination, EmailDestination)
    msg = render_email(sub, sub.destination, ALERTS, "sub-x-9")
    assert msg["Subject"] == "[accelpilot] " + summarize(ALERTS)
    assert msg["To"] == "a@x.org, b@x.org" and msg["Message-ID"] == "<sub-x-9@accelpilot>"
    body = msg.get_content()
    for a in ALERTS:
        assert a.reason in body and f"id: {a.id}" in body
    assert body.count("evidence: temp_c=93.5, limit_c=90") == 3
    assert "[CRITICAL] thermal firing on gpu-a1/gpu1" in body
    assert "[WARNING] power firing on gpu-a2\n" in body


def test_messages_and_descriptions_name_the_cluster() -> None:
    alert = make_alert("c1", severity="critical", host="gpu-a1", device="gpu1", cluster="eu-west")
    slack = json.loads(render_slack(webhook(fmt="slack"), [alert], "d"))["blocks"][1]
    assert "on *gpu-a1/gpu1 in eu-west*" in slack["text"]["text"]
    sub = Subscription.create(
        name="mail",
        destination={"type": "email", "to": ["a@x.org"], "smtp_host": "s"},
        filters={"cluster_glob": "eu-*"},
    )
    assert isinstance(sub.destination, EmailDestination)
    body = render_email(sub, sub.destination, [alert], "d").get_content()
    assert "[CRITICAL] thermal firing on gpu-a1/gpu1 in eu-west" in body
    assert "cluster eu-*" in sub.describe()


def test_email_delivery_uses_starttls_and_login_and_gives_up_on_refused_login(
    store: SubscriptionStore,
) -> None:
    store.add(
        Subscription.create(
            name="mail",
            destination={
                "type": "email",
                "to": ["ops@example.com"],
                "smtp_host": "mx.example.com",
                "smtp_port": 587,
                "starttls": True,
                "user": "bot",
                "password": "pw",
            },
        )
    )
    smtp = FakeSmtp()
    n = Notifier(store, clock=Clock(), smtp_factory=smtp, retry=RetryPolicy())
    n.offer(make_alert("a1"))
    assert n.pump().sent == 1
    assert smtp.log == [
        ("connect", "mx.example.com", "587"),
        ("starttls",),
        ("login", "bot", "pw"),
        ("quit",),
    ]
    parsed = email.message_from_bytes(smtp.sent[0].as_bytes())
    assert parsed["To"] == "ops@example.com" and "a1" in parsed.get_payload()
    smtp.error = smtplib.SMTPAuthenticationError(535, b"bad credentials")
    n.offer(make_alert("a2"))
    assert n.pump().dead == 1
    assert "refused the login: 535" in store.dead_letters()[0].last_error
    smtp.error = smtplib.SMTPServerDisconnected("gone")
    n.offer(make_alert("a3"))
    assert n.pump().failed == 1  # transient: retried later


# -- the real HTTP sender against a local server ---------------------------------------------------
class _Answer(BaseHTTPRequestHandler):
    status = 200
    headers_out: ClassVar[dict[str, str]] = {}
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        type(self).bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(self.status)
        for k, v in self.headers_out.items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[str, type[_Answer]]]:
    handler = type("H", (_Answer,), {"bodies": [], "headers_out": {}})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook/tok", handler
    server.shutdown()
    server.server_close()


def test_urllib_post_maps_http_answers_to_delivery_errors(
    http_server: tuple[str, type[_Answer]],
) -> None:
    url, handler = http_server
    urllib_post(url, b'{"x": 1}', {"Content-Type": "application/json"}, 5)
    assert handler.bodies == [b'{"x": 1}']
    handler.status, handler.headers_out = 503, {"Retry-After": "7"}
    with pytest.raises(DeliveryError) as err:
        urllib_post(url, b"{}", {}, 5)
    assert not err.value.permanent and err.value.retry_after_s == 7
    assert "tok" not in str(err.value)  # the URL is redacted in errors
    handler.status, handler.headers_out = 400, {}
    with pytest.raises(DeliveryError) as err:
        urllib_post(url, b"{}", {}, 5)
    assert err.value.permanent
    with pytest.raises(DeliveryError, match="cannot reach") as err:
        urllib_post("http://127.0.0.1:9/x", b"{}", {}, 5)
    assert not err.value.permanent


def test_sigterm_sets_the_stop_event_and_handlers_are_restored() -> None:
    stop = threading.Event()
    before = signal.getsignal(signal.SIGTERM)
    previous = _install_signals(stop)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert signal.getsignal(signal.SIGTERM) == before
