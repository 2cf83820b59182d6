"""``fleet.actions`` v1: a signed instruction for one host's actuator.

The signature is Ed25519 over :func:`signing_bytes` (the canonical encoding of every other field);
hosts hold public keys only. An actuator rejects an action that is unsigned, forged, expired,
replayed (``seq`` not above the last one applied for the host) or outside the device's limits.
"""

from __future__ import annotations

from typing import Literal

import msgspec

ActionKind = Literal["set_power_cap", "reset_power_cap", "set_load_weights", "park", "wake"]
ActionMode = Literal["auto", "advise", "manual"]


class Action(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    v: int = 1
    action_id: str
    host_id: str
    seq: int
    kind: ActionKind
    device_id: str | None = None
    cap_w: float | None = None
    stream_id: str | None = None
    weights: dict[str, float] | None = None
    issued_ts_ns: int
    expires_ts_ns: int
    issuer: str
    mode: ActionMode = "auto"
    reason: str = ""
    key_id: str
    signature: bytes = b""


_signing_encoder = msgspec.json.Encoder(order="sorted")


def signing_bytes(action: Action) -> bytes:
    """The exact bytes that are signed: every field but ``signature``, keys sorted."""
    fields = msgspec.structs.asdict(action)
    fields.pop("signature")
    return _signing_encoder.encode(fields)
