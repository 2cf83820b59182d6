"""Apply verified actions to this host's devices: read, compare, write; audit every decision.

An action reaches a device only after :class:`ActionVerifier` accepted it (signature, freshness,
replay, range). Then, per kind:

- ``set_power_cap``: read the enforced cap, skip the write if it is already within 0.5 W
  (outcome ``unchanged``), else write it and read it back.
- ``reset_power_cap``: the same with the device's default cap (all devices if ``device_id`` is
  None).
- ``set_load_weights``: the weights are published for local schedulers through the load-weights
  file (contract below); the devices themselves are not touched.
- ``park`` / ``wake``: only backends that can put a device in standby (the simulator today);
  others answer ``failed`` with the reason.

In dry-run mode nothing is written; the outcome is ``dry_run`` with the cap that would have been
set. Every decision, rejected ones included, is appended to the hash-chained audit log and
returned as an :class:`ActionResult` for ``fleet.action-results``.

Load-weights contract: ``<load_weights_path>`` is a JSON object replaced atomically (write to a
temp file, ``os.replace``) on every accepted ``set_load_weights``:
``{"v": 1, "host_id": ..., "updated_ts_ns": ..., "streams": {stream_id: {"weights":
{device_id: weight}, "action_id": ..., "seq": ...}}}``. Weights are relative shares of the
stream's work (they need not sum to 1; all zeros = this host takes none of the stream). A
scheduler re-reads the file when its mtime changes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from accelpilot.collectors.action_verifier import ActionVerifier, DeviceLimits
from accelpilot.collectors.audit_log import AuditLog
from accelpilot.collectors.device import DeviceBackend, DeviceInfo
from accelpilot.errors import AccelpilotError
from accelpilot.schemas.action_results import ActionResult, Outcome
from accelpilot.schemas.actions import Action

CAP_TOLERANCE_W = 0.5


@dataclass(frozen=True, slots=True)
class _Target:
    backend: DeviceBackend
    index: int
    info: DeviceInfo


class Actuator:
    def __init__(
        self,
        host_id: str,
        targets: Sequence[tuple[DeviceBackend, DeviceInfo]],
        verifier: ActionVerifier,
        audit: AuditLog,
        *,
        load_weights_path: Path,
        dry_run: bool = False,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.host_id = host_id
        self.verifier = verifier
        self.audit = audit
        self.dry_run = dry_run
        self.clock_ns = clock_ns
        self.load_weights_path = load_weights_path
        self._targets = {info.device_id: _Target(b, info.index, info) for b, info in targets}
        self.limits = limits_of({dev: t.info for dev, t in self._targets.items()})
        self.caps_at_start_w: dict[str, float] = {}
        for dev, t in self._targets.items():
            cap = t.backend.power_cap_w(t.index)
            if cap is not None:
                self.caps_at_start_w[dev] = cap

    def handle(self, action: Action) -> list[ActionResult]:
        """Verify and apply one action; one result per device touched (audited)."""
        verdict = self.verifier.check(action, self.limits)
        if not verdict.accepted:
            why = f"{verdict.reason}: {verdict.detail}" if verdict.detail else verdict.reason
            return [self._record(action, action.device_id, "rejected", why)]
        try:
            return self._apply(action)
        except AccelpilotError as e:
            return [self._record(action, action.device_id, "failed", str(e))]

    def _apply(self, action: Action) -> list[ActionResult]:
        if action.kind == "set_power_cap":
            assert action.device_id is not None and action.cap_w is not None
            return [self._set_cap(action, action.device_id, action.cap_w)]
        if action.kind == "reset_power_cap":
            devices = [action.device_id] if action.device_id else sorted(self.limits)
            return [self._set_cap(action, d, self.limits[d].default_cap_w) for d in devices]
        if action.kind == "set_load_weights":
            if not self.dry_run:
                self._publish_weights(action)
            outcome: Outcome = "dry_run" if self.dry_run else "applied"
            return [self._record(action, None, outcome, f"stream {action.stream_id}")]
        # park / wake
        devices = [action.device_id] if action.device_id else sorted(self._targets)
        return [self._standby(action, d, parked=action.kind == "park") for d in devices]

    def _set_cap(self, action: Action, device_id: str, cap_w: float) -> ActionResult:
        t = self._targets[device_id]
        before = t.backend.power_cap_w(t.index)
        if before is not None and abs(before - cap_w) <= CAP_TOLERANCE_W:
            return self._record(
                action, device_id, "unchanged", "already at that cap", before, before
            )
        if self.dry_run:
            return self._record(action, device_id, "dry_run", "dry-run: not written", before, cap_w)
        t.backend.set_power_cap_w(t.index, cap_w)
        after = t.backend.power_cap_w(t.index)
        if after is not None and abs(after - cap_w) > CAP_TOLERANCE_W:
            return self._record(
                action,
                device_id,
                "failed",
                f"wrote {cap_w} W, device reports {after} W",
                before,
                after,
            )
        return self._record(action, device_id, "applied", "", before, after)

    def _standby(self, action: Action, device_id: str, *, parked: bool) -> ActionResult:
        t = self._targets[device_id]
        set_standby = getattr(t.backend, "set_standby", None)
        if set_standby is None:
            return self._record(
                action, device_id, "failed", f"the {t.backend.name} backend cannot park devices"
            )
        if self.dry_run:
            return self._record(action, device_id, "dry_run", "dry-run: not written")
        set_standby(t.index, parked)
        return self._record(action, device_id, "applied", "parked" if parked else "woken")

    def _publish_weights(self, action: Action) -> None:
        path = self.load_weights_path
        try:
            doc = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            doc = {"v": 1, "host_id": self.host_id, "streams": {}}
        doc["updated_ts_ns"] = self.clock_ns()
        doc["streams"][action.stream_id] = {
            "weights": action.weights,
            "action_id": action.action_id,
            "seq": action.seq,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
        os.replace(tmp, path)

    def restore_caps(self) -> list[str]:
        """Put back the caps found at start (on shutdown, if configured). Returns devices reset."""
        restored = []
        for device_id, cap in self.caps_at_start_w.items():
            t = self._targets[device_id]
            now = t.backend.power_cap_w(t.index)
            if now is not None and abs(now - cap) > CAP_TOLERANCE_W and not self.dry_run:
                t.backend.set_power_cap_w(t.index, cap)
                self.audit.append(
                    action_id="shutdown-restore",
                    host_id=self.host_id,
                    kind="reset_power_cap",
                    outcome="applied",
                    device_id=device_id,
                    reason="restore cap found at start",
                    previous_cap_w=now,
                    new_cap_w=cap,
                )
                restored.append(device_id)
        return restored

    def _record(
        self,
        action: Action,
        device_id: str | None,
        outcome: Outcome,
        reason: str,
        previous_cap_w: float | None = None,
        new_cap_w: float | None = None,
    ) -> ActionResult:
        ts_ns = self.clock_ns()
        audit_hash = self.audit.append(
            action_id=action.action_id,
            host_id=self.host_id,
            kind=action.kind,
            outcome=outcome,
            device_id=device_id,
            reason=reason,
            previous_cap_w=previous_cap_w,
            new_cap_w=new_cap_w,
            ts_ns=ts_ns,
        )
        return ActionResult(
            action_id=action.action_id,
            host_id=self.host_id,
            device_id=device_id,
            ts_ns=ts_ns,
            outcome=outcome,
            reason=reason,
            previous_cap_w=previous_cap_w,
            new_cap_w=new_cap_w,
            audit_hash=audit_hash,
        )


def limits_of(devices: Mapping[str, DeviceInfo]) -> dict[str, DeviceLimits]:
    """Each device's own power-limit constraints, as the verifier checks them."""
    return {
        d: DeviceLimits(pl.min_w, pl.max_w, pl.default_w)
        for d, info in devices.items()
        if (pl := info.capabilities.power_limits) is not None
    }
