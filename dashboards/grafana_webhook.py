"""The alert service's receiver for Grafana unified-alerting webhook notifications.

Grafana's webhook contact point (provisioned by :mod:`accelpilot.dashboards.alert_rules`) POSTs
the documented JSON body (https://grafana.com/docs/grafana/latest/alerting/configure-notifications/
manage-contact-points/integrations/webhook-notifier/): ``receiver``, ``status``, ``orgId``,
``alerts`` (each with ``status``, ``labels``, ``annotations``, ``startsAt``, ``endsAt``,
``generatorURL``, ``fingerprint``, ``values``, ...), ``groupLabels``, ``commonLabels``,
``externalURL``, ``version``, ``groupKey``, ``truncatedAlerts``, ``title``, ``state``,
``message``. Each alert becomes a ``fleet.alerts`` v1 :class:`~accelpilot.schemas.alerts.Alert`
and goes through the same subscription delivery as the worker's alerts (filters, grouping, rate
limits, retries, dead letters):

- ``id``: ``grafana:<fingerprint>:<startsAt ns>`` (one id per episode, so Grafana's repeated
  notifications of a still-firing alert are de-duplicated per subscription);
- ``kind``: the rule's ``kind`` label (our rules set it: ``thermal``, ``failure_risk``, ...,
  the same kinds as the worker's alerts), else the ``alertname`` in lower case with ``_``;
- ``severity``: the ``severity`` label when it is ``info``, ``warning`` or ``critical``, else
  ``warning``; ``state``: ``firing`` or ``resolved``;
- ``host_id`` / ``device_id`` / ``metric``: the ``host``, ``device`` and ``metric`` labels
  (the series' InfluxDB tags; ``-`` when an alert has no host label);
- ``ts_ns``: ``endsAt`` for a resolved alert, else ``startsAt``; ``started_ts_ns``: ``startsAt``;
- ``reason``: ``Grafana: <alertname>: <summary annotation>``; ``evidence``: the ``values``.

The request is answered 200 only once its alerts are durable in the subscription store, so a
failure (503) makes Grafana retry; a body that is not Grafana's shape is answered 400 and
nothing of it is queued. With a token, requests must carry ``Authorization: Bearer <token>``
(the contact point's ``authorization_credentials``).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from accelpilot.dashboards.notify import Notifier, OfferReport
from accelpilot.dashboards.subscriptions import SEVERITY_RANK, SubscriptionStore
from accelpilot.errors import InvalidPayloadError, ServiceUnavailableError
from accelpilot.schemas.alerts import Alert

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024
_TS = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$")


def parse_rfc3339_ns(text: str) -> int | None:
    """Nanoseconds since the epoch; ``None`` for Go's zero time (``0001-01-01T00:00:00Z``).

    >>> parse_rfc3339_ns("2021-10-12T09:51:03.157076+02:00")
    1634025063157076000
    >>> parse_rfc3339_ns("0001-01-01T00:00:00Z") is None
    True
    """
    m = _TS.match(text)
    if m is None:
        raise InvalidPayloadError("grafana-timestamp", f"not an RFC 3339 time: {text[:60]!r}")
    base, frac, tz = m.groups()
    if base.startswith("0001-01-01"):
        return None
    dt = datetime.fromisoformat(base + ("+00:00" if tz == "Z" else tz))
    return int(dt.timestamp()) * 10**9 + int((frac or "").ljust(9, "0"))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "grafana"


def grafana_alerts(payload: Any, now_ns: int) -> list[Alert]:
    """The alerts of one Grafana webhook body, as ``fleet.alerts`` alerts (the ``cluster`` label
    of our rules, dashboards/alert_rules.py, becomes the alert's cluster)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
        raise InvalidPayloadError("grafana-shape", "expected a JSON object with an 'alerts' list")
    out = []
    for i, a in enumerate(payload["alerts"]):
        where = f"alerts[{i}]"
        if not isinstance(a, dict) or not isinstance(a.get("labels", {}), dict):
            raise InvalidPayloadError("grafana-shape", f"{where}: expected an object with labels")
        status = a.get("status")
        if status not in ("firing", "resolved"):
            raise InvalidPayloadError(
                "grafana-shape", f"{where}.status: 'firing' or 'resolved', not {status!r}"
            )
        labels = {str(k): str(v) for k, v in (a.get("labels") or {}).items()}
        notes = a.get("annotations") or {}
        starts = parse_rfc3339_ns(str(a.get("startsAt") or "0001-01-01T00:00:00Z")) or now_ns
        ends = parse_rfc3339_ns(str(a.get("endsAt") or "0001-01-01T00:00:00Z"))
        name = labels.get("alertname", "grafana alert")
        summary = str(notes.get("summary") or notes.get("description") or "")
        fingerprint = str(a.get("fingerprint") or _slug(json.dumps(labels, sort_keys=True)))
        severity = labels.get("severity", "warning")
        values = a.get("values") or {}
        out.append(
            Alert(
                id=f"grafana:{fingerprint}:{starts}",
                kind=labels.get("kind") or _slug(name),
                severity=severity if severity in SEVERITY_RANK else "warning",  # type: ignore[arg-type]
                state=status,
                host_id=labels.get("host") or "-",
                device_id=labels.get("device") or None,
                ts_ns=ends if status == "resolved" and ends is not None else starts,
                started_ts_ns=starts,
                metric=labels.get("metric") or None,
                cluster=labels.get("cluster") or None,
                reason=f"Grafana: {name}" + (f": {summary}" if summary else ""),
                evidence={
                    str(k): float(v)
                    for k, v in (values.items() if isinstance(values, dict) else ())
                    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                },
            )
        )
    return out


class GrafanaWebhookServer:
    """An HTTP endpoint (one thread, requests served one at a time) that queues Grafana's
    notifications into the subscription store at ``store_path``. ``port=0`` picks a free port
    (see :attr:`url`)."""

    def __init__(
        self,
        store_path: Path | str,
        host: str = "127.0.0.1",
        port: int = 9095,
        *,
        path: str = "/grafana",
        token: str | None = None,
        clock: Callable[[], float] = time.time,
        on_offer: Callable[[int, OfferReport | None], None] | None = None,
    ) -> None:
        self.store_path = store_path
        self.path = "/" + path.strip("/")
        self.token = token
        self.clock = clock
        self.on_offer = on_offer  # (alerts received, report or None when rejected)
        self._notifier: Notifier | None = None  # created in, and used by, the serving thread
        try:
            self._server = HTTPServer((host, port), self._handler_class())
        except OSError as e:
            raise ServiceUnavailableError(
                f"cannot listen on {host}:{port} for Grafana's webhook: {e.strerror}; is another "
                "alert service running? pick another address with --grafana-listen"
            ) from e
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.socket.getsockname()[:2]
        return f"http://{host}:{port}{self.path}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="grafana-webhook", daemon=True)
        self._thread.start()
        log.info("receiving Grafana webhook notifications on %s", self.url)

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() waits for a serve loop: only when one runs
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()

    def _serve(self) -> None:
        try:
            self._server.serve_forever(poll_interval=0.2)
        finally:
            if self._notifier is not None:
                self._notifier.store.close()

    def _queue(self, alerts: list[Alert]) -> OfferReport:
        if self._notifier is None:
            self._notifier = Notifier(SubscriptionStore(self.store_path), clock=self.clock)
        return self._notifier.offer_many(alerts)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "accelpilot-alerts"

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("grafana webhook: " + format, *args)

            def _answer(self, code: int, doc: dict[str, Any]) -> None:
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._answer(405, {"error": f"POST Grafana's webhook JSON to {receiver.path}"})

            def do_PUT(self) -> None:  # a contact point may be set to PUT
                self.do_POST()

            def do_POST(self) -> None:
                if self.path.split("?", 1)[0].rstrip("/") != receiver.path.rstrip("/"):
                    self._answer(404, {"error": f"not found; Grafana posts to {receiver.path}"})
                    return
                if receiver.token is not None:
                    given = self.headers.get("Authorization", "")
                    if not hmac.compare_digest(given.encode(), f"Bearer {receiver.token}".encode()):
                        self._answer(401, {"error": "missing or wrong bearer token"})
                        return
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    self._answer(413, {"error": f"body over {MAX_BODY_BYTES} bytes"})
                    return
                raw = self.rfile.read(length)
                try:
                    alerts = grafana_alerts(json.loads(raw), time.time_ns())
                except (ValueError, InvalidPayloadError) as e:
                    log.warning("rejected a Grafana webhook body: %s", e)
                    if receiver.on_offer is not None:
                        receiver.on_offer(0, None)
                    self._answer(400, {"error": f"not a Grafana webhook body: {e}"})
                    return
                try:
                    report = receiver._queue(alerts)
                except Exception as e:  # the store is unusable: Grafana retries later
                    log.exception("cannot queue Grafana's alerts")
                    self._answer(503, {"error": f"cannot queue the alerts now: {e}"})
                    return
                if receiver.on_offer is not None:
                    receiver.on_offer(len(alerts), report)
                self._answer(
                    200,
                    {
                        "received": len(alerts),
                        "queued": report.queued,
                        "duplicates": report.duplicates,
                        "unmatched": report.unmatched,
                    },
                )

        return Handler
