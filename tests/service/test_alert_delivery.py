"""Alert subscriptions end to end: the real broker, a real SMTP server (aiosmtpd) and a real HTTP
receiver on 127.0.0.1 get exactly the alerts their filters select; a receiver that is down for a
while gets them after it returns; a destination that never returns yields a dead letter; a full
replay of the topic sends nothing twice. Grafana's webhook notifications, POSTed over HTTP in
Grafana's documented shape to the service's own endpoint, take the same way to the receivers."""

from __future__ import annotations

import email
import email.policy
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from accelpilot.collectors.publisher import KafkaPublisher
from accelpilot.config import Settings
from accelpilot.dashboards.alert_service import AlertServiceStats, run_alert_service
from accelpilot.dashboards.notify import RetryPolicy
from accelpilot.dashboards.subscriptions import SubscriptionStore, subscribe
from accelpilot.schemas.alerts import Alert
from accelpilot.schemas.topics import ALERTS

pytestmark = [pytest.mark.service, pytest.mark.slow, pytest.mark.timeout(120)]

aiosmtpd_controller = pytest.importorskip("aiosmtpd.controller")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(
    pred: Callable[[], bool], timeout_s: float, what: str, show: Callable[[], object] = str
) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}: {show()}")
        time.sleep(0.05)


class HttpReceiver:
    """A real HTTP server on a fixed port that can be stopped and started again."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lock = threading.Lock()
        self.bodies: dict[str, list[dict[str, Any]]] = {"/json": [], "/slack": []}
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.bodies[self.path].append(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()
        self.server = None

    def json_ids(self) -> list[str]:
        with self.lock:
            return sorted(a["id"] for b in self.bodies["/json"] for a in b["alerts"])

    def slack_ids(self) -> list[str]:
        with self.lock:
            texts = [
                blk["text"]["text"]
                for b in self.bodies["/slack"]
                for blk in b["blocks"]
                if blk["type"] == "section"
            ]
        return sorted(m for t in texts for m in re.findall(r"id `([^`]+)`", t))


class Inbox:
    """aiosmtpd handler: keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        self.messages.append(msg)
        return "250 Message accepted for delivery"

    def ids(self) -> list[str]:
        bodies = [m.get_content() for m in list(self.messages)]
        return sorted(i for b in bodies for i in re.findall(r"^  id: (\S+)", b, re.M))


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, Inbox]]:
    inbox, port = Inbox(), _free_port()
    controller = aiosmtpd_controller.Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, inbox
    controller.stop()


def _alert(aid: str, severity: str, kind: str, host: str, device: str | None, **kw: Any) -> Alert:
    now_ns = time.time_ns()
    return Alert(
        id=aid,
        kind=kind,
        severity=severity,  # type: ignore[arg-type]
        state=kw.get("state", "firing"),
        host_id=host,
        device_id=device,
        ts_ns=now_ns,
        started_ts_ns=now_ns - 10**9,
        metric="temp_c",
        reason=f"{kind} on {host}",
        evidence={"value": 1.5},
    )


class Service:
    def __init__(self, settings: Settings, store: Path, group_id: str, **extra: Any) -> None:
        self.stop_event = threading.Event()
        self.stats = AlertServiceStats()
        self.error: BaseException | None = None
        kwargs = {
            "group_id": group_id,
            "from_beginning": True,
            "stop": self.stop_event,
            "stats": self.stats,
            "retry": RetryPolicy(
                base_s=0.2, cap_s=0.5, jitter=0.1, max_attempts=1000, give_up_after_s=6
            ),
            "http_timeout_s": 2.0,
            "smtp_timeout_s": 2.0,
            "poll_max_s": 0.2,
            **extra,
        }

        def run() -> None:
            try:
                run_alert_service(
                    settings.kafka.bootstrap_servers, settings.topic(ALERTS), store, **kwargs
                )
            except BaseException as e:
                self.error = e

        self.thread = threading.Thread(target=run, name="alert-service", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive()
        assert self.error is None, self.error


def test_each_destination_gets_exactly_its_alerts_and_outages_heal(
    service_settings: Settings, tmp_path: Path, smtp_server: tuple[int, Inbox]
) -> None:
    started = time.monotonic()
    smtp_port, inbox = smtp_server
    http = HttpReceiver(_free_port())
    http.start()
    store = tmp_path / "alerts.sqlite"
    base = f"http://127.0.0.1:{http.port}"
    subscribe(
        store,
        name="json-warn",
        webhook_url=f"{base}/json",
        min_severity="warning",
        host_glob="gpu-a*",
        group_window_s=0.3,
    )
    subscribe(store, name="slack-crit", webhook_url=f"{base}/slack", webhook_format="slack",
              min_severity="critical")  # fmt: skip
    subscribe(
        store,
        name="mail-thermal",
        email_to=["ops@example.com"],
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
        kinds=["thermal"],
        device_glob="*1",
        states=["firing"],
    )
    subscribe(
        store,
        name="never",
        webhook_url=f"http://127.0.0.1:{_free_port()}/gone",
        min_severity="critical",
        group_window_s=1.0,
    )
    first = [
        _alert("a1", "warning", "thermal", "gpu-a1", "gpu1"),  # json, mail
        _alert("a2", "info", "thermal", "gpu-a1", "gpu1"),  # mail
        _alert("a3", "critical", "power", "gpu-b2", "gpu0"),  # slack, never
        _alert("a4", "critical", "thermal", "gpu-a3", "gpu1", state="resolved"),  # json,slack,never
        _alert("a5", "warning", "ecc", "gpu-b1", None),  # nobody
        _alert("a6", "critical", "thermal", "gpu-a2", "gpu0"),  # json, slack, never
    ]
    service = Service(service_settings, store, group_id=f"alerts-{tmp_path.name}")
    try:
        with KafkaPublisher(
            service_settings.kafka.bootstrap_servers, service_settings.topic(ALERTS)
        ) as pub:
            for a in first:
                pub.send(a.host_id, a)
            pub.send(first[0].host_id, first[0])  # a replayed duplicate
            pub.send_raw(b"gpu-x", b"not json")
            pub.send_raw(b"gpu-x", b'{"v": 3, "id": "future"}')

        want_json, want_slack, want_mail = ["a1", "a4", "a6"], ["a3", "a4", "a6"], ["a1", "a2"]
        _until(
            lambda: (
                (http.json_ids(), http.slack_ids(), inbox.ids())
                == (want_json, want_slack, want_mail)
            ),
            30,
            "the first alerts at the HTTP and SMTP receivers",
            lambda: (http.json_ids(), http.slack_ids(), inbox.ids(), service.stats),
        )
        st = service.stats
        _until(lambda: st.consumed == 9 and st.duplicates == 2, 10, "all records", lambda: st)
        assert (st.bad_payloads, st.unmatched, st.queued) == (2, 1, 11)
        with SubscriptionStore(store) as view:  # "never" has closed its group and is retrying
            tried = (
                "SELECT COUNT(*) FROM deliveries d JOIN subscriptions s ON s.id = d.sub_id "
                "WHERE s.name = 'never' AND d.attempts >= 1"
            )
            _until(lambda: view.db.execute(tried).fetchone()[0] == 1, 10, "a try of 'never'")
        assert service.stats.duplicates == 2 and service.stats.unmatched == 1

        # The HTTP receiver goes away; alerts published meanwhile arrive once it is back.
        http.stop()
        second = [
            _alert("b1", "warning", "power", "gpu-a5", "gpu3"),  # json
            _alert("b2", "critical", "power", "gpu-a6", None),  # json, slack, never
        ]
        with KafkaPublisher(
            service_settings.kafka.bootstrap_servers, service_settings.topic(ALERTS)
        ) as pub:
            for a in second:
                pub.send(a.host_id, a)
        with SubscriptionStore(store) as view:
            retried = (
                "SELECT COUNT(*) FROM deliveries d JOIN subscriptions s ON s.id = d.sub_id "
                "WHERE s.name IN ('json-warn', 'slack-crit') AND d.attempts >= 3"
            )
            _until(
                lambda: view.db.execute(retried).fetchone()[0] == 2,
                15,
                "retries towards the stopped receiver",
            )
        assert http.json_ids() == want_json
        http.start()  # the same port
        _until(
            lambda: (
                (http.json_ids(), http.slack_ids())
                == (sorted([*want_json, "b1", "b2"]), sorted([*want_slack, "b2"]))
            ),
            15,
            "the alerts held back during the outage",
        )

        # The destination that never answers: its first message becomes a dead letter.
        with SubscriptionStore(store) as view:
            _until(lambda: len(view.dead_letters("never")) >= 1, 20, "a dead letter")
            letter = view.dead_letters("never")[0]
        assert sorted(a["id"] for a in letter.alerts) == ["a3", "a4", "a6"]
        assert "cannot reach" in letter.last_error and letter.attempts > 3
        time.sleep(0.5)
        assert inbox.ids() == want_mail  # nothing else, nothing twice
        assert http.json_ids() == sorted([*want_json, "b1", "b2"])
        assert http.slack_ids() == sorted([*want_slack, "b2"])
    finally:
        service.close()

    # A new consumer group replays the whole topic: every alert is a duplicate, nothing is sent.
    replay = Service(service_settings, store, group_id=f"replay-{tmp_path.name}")
    try:
        rs = replay.stats
        _until(lambda: rs.duplicates + rs.queued >= 17, 30, "the replay", lambda: rs)
        assert (rs.consumed, rs.queued, rs.duplicates) == (11, 0, 17)
        time.sleep(0.5)
    finally:
        replay.close()
        http.stop()
    assert http.json_ids() == sorted([*want_json, "b1", "b2"])
    assert inbox.ids() == want_mail
    assert time.monotonic() - started < 60


def test_grafana_webhook_notifications_reach_the_subscriptions(
    service_settings: Settings, tmp_path: Path
) -> None:
    """A real HTTP POST of Grafana's documented webhook body to `alerts serve`'s endpoint; a
    real local receiver gets exactly what its subscriptions select, once each, and a resolve
    later; a receiver that was down gets the Grafana alerts after it returns."""
    from tests.unit.test_grafana_webhook import GRAFANA_BODY, _post

    http = HttpReceiver(_free_port())
    store = tmp_path / "alerts.sqlite"
    base = f"http://127.0.0.1:{http.port}"
    subscribe(store, name="crit-json", webhook_url=f"{base}/json", min_severity="critical")
    subscribe(store, name="node2-slack", webhook_url=f"{base}/slack", webhook_format="slack",
              host_glob="node2")  # fmt: skip
    service = Service(
        service_settings,
        store,
        group_id=f"grafana-{tmp_path.name}",
        grafana_listen=("127.0.0.1", 0),
        grafana_token="t0ken",
    )
    auth = {"Authorization": "Bearer t0ken"}
    try:
        _until(lambda: bool(service.stats.grafana_url), 15, "the Grafana endpoint")
        url = service.stats.grafana_url
        body = json.dumps(GRAFANA_BODY).encode()
        # The receiver is down at first: the service queues and retries.
        assert _post(url, body, auth) == (
            200,
            {"received": 2, "queued": 2, "duplicates": 0, "unmatched": 0},
        )
        assert _post(url, body, auth)[1]["duplicates"] == 2  # Grafana's repeat: not re-sent
        with SubscriptionStore(store) as view:
            tried = "SELECT COUNT(*) FROM deliveries WHERE attempts >= 2"
            _until(lambda: view.db.execute(tried).fetchone()[0] == 2, 15, "retries")
        http.start()
        hot = "grafana:c6eadffa33fcdf37:1634025063157076000"
        silent = "grafana:bc97ff14869b13e3:1634031600123456789"
        _until(
            lambda: (http.json_ids(), http.slack_ids()) == ([hot], [silent]),
            15,
            "Grafana's alerts at the receiver",
            lambda: (http.json_ids(), http.slack_ids(), service.stats),
        )
        (delivered,) = http.bodies["/json"][0]["alerts"]
        assert delivered["kind"] == "thermal" and delivered["device_id"] == "node1/gpu3"
        assert delivered["evidence"] == {"B": 91.25, "C": 1.0}

        # The thermal alert resolves: Grafana posts it with status resolved and an endsAt.
        resolved = json.loads(body)
        resolved["status"] = "resolved"
        resolved["alerts"] = [
            {**resolved["alerts"][0], "status": "resolved", "endsAt": "2021-10-12T10:01:03Z"}
        ]
        assert _post(url, json.dumps(resolved).encode(), auth)[1]["queued"] == 1
        _until(lambda: http.json_ids() == [hot, hot], 15, "the resolve")
        states = [b["alerts"][0]["state"] for b in http.bodies["/json"]]
        assert states == ["firing", "resolved"]
        assert _post(url, body, {})[0] == 401  # a caller without the token queues nothing
        time.sleep(0.5)
        assert (http.json_ids(), http.slack_ids()) == ([hot, hot], [silent])
        assert (service.stats.grafana_alerts, service.stats.grafana_queued) == (5, 3)
    finally:
        service.close()
        if http.server is not None:
            http.stop()
