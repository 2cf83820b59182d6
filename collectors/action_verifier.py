"""Decide whether a host may act on an :class:`Action`: signed, fresh, in order, in range.

:meth:`ActionVerifier.check` runs its checks in a fixed order, and stops at the first failure:

1. **structure** (``wrong-host``, ``unsigned``, ``unknown-key``, ``missing-field``,
   ``unexpected-field``, ``bad-seq``): cheap, no cryptography, so junk costs nothing.
2. **signature** (``bad-signature``): from here on every field is known to come from a trusted
   key; nothing after this point reads a field an attacker could have chosen.
3. **time** (``bad-lifetime``, ``lifetime-too-long``, ``issued-in-future``, ``expired``) against
   the injected clock.
4. **sequence** (``replayed-seq``): ``seq`` must be strictly above the last *accepted* one.
5. **range** (``unknown-device``, ``cap-out-of-range``, ``bad-weights``) against the device's
   own limits.

Only an action that passes every check moves the replay state, and the new ``seq`` is written
to disk *before* the verdict is returned (fail closed: if it cannot be saved, ``check`` raises
and nothing is accepted). So the replay state is never updated from an unverified message, an
attacker cannot burn sequence numbers, and a restarted agent still refuses replays. Checking
the signature before time and sequence also means a forged message is reported as forged
(``bad-signature``), not as whatever its made-up timestamps happen to say.

Deleting the state file re-opens replays of actions that have not yet expired; expiry
(``max_lifetime_s``, default 10 min) bounds that window.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from accelpilot.errors import ConfigError, SeqStateError
from accelpilot.schemas.actions import Action
from accelpilot.signing import signature_valid

STATE_VERSION = 1
_NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class DeviceLimits:
    """A device's own power-limit constraints (e.g. NVML's min/max/default), in watts."""

    min_cap_w: float
    max_cap_w: float
    default_cap_w: float

    def __post_init__(self) -> None:
        values = (self.min_cap_w, self.max_cap_w, self.default_cap_w)
        if not all(math.isfinite(v) for v in values) or not (
            0 <= self.min_cap_w <= self.default_cap_w <= self.max_cap_w
        ):
            raise ValueError(
                f"device limits need 0 <= min <= default <= max, all finite; got {self}"
            )


@dataclass(frozen=True)
class Verdict:
    """``reason`` is short and machine-groupable (``ok`` when accepted); ``detail`` is human."""

    accepted: bool
    reason: str
    detail: str = ""


ACCEPTED = Verdict(True, "ok")


class SeqStore(Protocol):
    """Where the last accepted ``seq`` lives between restarts."""

    def load(self) -> int | None: ...

    def save(self, seq: int) -> None: ...


class JsonSeqStore:
    """The last accepted ``seq`` of one host in a small JSON file, replaced atomically.

    Each save writes a temp file in the same directory, fsyncs it, ``os.replace``-s it over the
    old one and fsyncs the directory, so a crash leaves either the old or the new state, never
    a torn one. A missing file means "nothing accepted yet"; a corrupt file, or one written for
    another host, is an error (fail closed: treating it as empty would re-open replays).
    """

    def __init__(self, path: str | Path, host_id: str) -> None:
        self.path = Path(path)
        self.host_id = host_id

    def load(self) -> int | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise SeqStateError(f"cannot read replay state {self.path}: {e.strerror}") from e
        try:
            state = json.loads(raw)
            version, host_id, seq = state["v"], state["host_id"], state["last_seq"]
        except (ValueError, TypeError, KeyError) as e:
            raise SeqStateError(
                f"replay state {self.path} is corrupt ({e!r}); refusing to guess. Restore it, "
                "or delete it once every action issued to this host has expired"
            ) from e
        if version != STATE_VERSION or host_id != self.host_id or type(seq) is not int:
            raise SeqStateError(
                f"replay state {self.path} (v={version}, host_id={host_id!r}) is not a "
                f"v{STATE_VERSION} state of host {self.host_id!r}"
            )
        return seq

    def save(self, seq: int) -> None:
        data = json.dumps({"v": STATE_VERSION, "host_id": self.host_id, "last_seq": seq})
        directory = self.path.parent
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            raise SeqStateError(f"cannot write replay state {self.path}: {e}") from e


def _reject(reason: str, detail: str = "") -> Verdict:
    return Verdict(False, reason, detail)


class ActionVerifier:
    """Verifies actions for one host. ``clock_ns`` returns wall-clock time in ns since epoch."""

    def __init__(
        self,
        public_keys: Mapping[str, Ed25519PublicKey],
        host_id: str,
        clock_ns: Callable[[], int],
        seq_store: SeqStore,
        *,
        max_clock_skew_s: float = 5.0,
        max_lifetime_s: float = 600.0,
    ) -> None:
        if not host_id:
            raise ConfigError("host_id: must not be empty")
        if not (math.isfinite(max_clock_skew_s) and max_clock_skew_s >= 0):
            raise ConfigError(f"max_clock_skew_s: must be >= 0, got {max_clock_skew_s}")
        if not (math.isfinite(max_lifetime_s) and max_lifetime_s > 0):
            raise ConfigError(f"max_lifetime_s: must be > 0, got {max_lifetime_s}")
        self._keys = dict(public_keys)
        self.host_id = host_id
        self._clock_ns = clock_ns
        self._store = seq_store
        self._skew_ns = round(max_clock_skew_s * _NS_PER_S)
        self._max_lifetime_ns = round(max_lifetime_s * _NS_PER_S)
        self._last_seq = seq_store.load()
        self._lock = threading.Lock()

    @property
    def last_accepted_seq(self) -> int | None:
        return self._last_seq

    def check(self, action: Action, limits: Mapping[str, DeviceLimits]) -> Verdict:
        """Accept or reject ``action``; an accepted ``seq`` is persisted before returning."""
        with self._lock:
            verdict = (
                self._check_structure(action)
                or self._check_signature(action)
                or self._check_time(action)
                or self._check_seq(action)
                or _check_range(action, limits)
            )
            if verdict is not None:
                return verdict
            self._store.save(action.seq)  # raises rather than accept without a durable record
            self._last_seq = action.seq
            return ACCEPTED

    def _check_structure(self, a: Action) -> Verdict | None:
        if a.host_id != self.host_id:
            return _reject("wrong-host", f"for {a.host_id!r}, this is {self.host_id!r}")
        if not a.signature:
            return _reject("unsigned")
        if a.key_id not in self._keys:
            return _reject("unknown-key", f"key_id {a.key_id!r}")
        if a.seq < 0:
            return _reject("bad-seq", f"seq {a.seq} < 0")
        return _check_fields(a)

    def _check_signature(self, a: Action) -> Verdict | None:
        if not signature_valid(a, self._keys[a.key_id]):
            return _reject("bad-signature", f"key_id {a.key_id}")
        return None

    def _check_time(self, a: Action) -> Verdict | None:
        lifetime_ns = a.expires_ts_ns - a.issued_ts_ns
        if lifetime_ns <= 0:
            return _reject("bad-lifetime", "expires_ts_ns <= issued_ts_ns")
        if lifetime_ns > self._max_lifetime_ns:
            return _reject("lifetime-too-long", f"{lifetime_ns / _NS_PER_S:.3f} s")
        now_ns = self._clock_ns()
        if a.issued_ts_ns > now_ns + self._skew_ns:
            return _reject("issued-in-future", f"{(a.issued_ts_ns - now_ns) / _NS_PER_S:.3f} s")
        if now_ns >= a.expires_ts_ns:
            return _reject("expired", f"{(now_ns - a.expires_ts_ns) / _NS_PER_S:.3f} s ago")
        return None

    def _check_seq(self, a: Action) -> Verdict | None:
        if self._last_seq is not None and a.seq <= self._last_seq:
            return _reject("replayed-seq", f"seq {a.seq} <= last accepted {self._last_seq}")
        return None


# kind -> (fields that must be set, fields that must be unset). ``device_id`` unset = whole host.
_FIELD_RULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "set_power_cap": (("device_id", "cap_w"), ("stream_id", "weights")),
    "reset_power_cap": ((), ("cap_w", "stream_id", "weights")),
    "set_load_weights": (("stream_id", "weights"), ("device_id", "cap_w")),
    "park": ((), ("cap_w", "stream_id", "weights")),
    "wake": ((), ("cap_w", "stream_id", "weights")),
}


def _check_fields(a: Action) -> Verdict | None:
    if not a.action_id or not a.issuer:
        return _reject("missing-field", "action_id and issuer must not be empty")
    rules = _FIELD_RULES.get(a.kind)
    if rules is None:
        return _reject("missing-field", f"unknown kind {a.kind!r}")
    required, forbidden = rules
    for name in required:
        if getattr(a, name) is None:
            return _reject("missing-field", f"{a.kind} needs {name}")
    for name in forbidden:
        if getattr(a, name) is not None:
            return _reject("unexpected-field", f"{a.kind} takes no {name}")
    return None


def _check_range(a: Action, limits: Mapping[str, DeviceLimits]) -> Verdict | None:
    if a.device_id is not None and a.device_id not in limits:
        return _reject("unknown-device", f"device {a.device_id!r}")
    if a.cap_w is not None and a.device_id is not None:
        lim = limits[a.device_id]
        if not (math.isfinite(a.cap_w) and lim.min_cap_w <= a.cap_w <= lim.max_cap_w):
            return _reject(
                "cap-out-of-range",
                f"{a.cap_w} W outside [{lim.min_cap_w}, {lim.max_cap_w}] W of {a.device_id}",
            )
    if a.weights is not None:
        unknown = sorted(d for d in a.weights if d not in limits)
        if unknown:
            return _reject("unknown-device", f"weights name {unknown}")
        values = list(a.weights.values())
        total = sum(values)
        # All zeros is a valid decision: this host takes no share of the stream.
        if (
            not values
            or not all(math.isfinite(w) and w >= 0 for w in values)
            or not (0 <= total < math.inf)
        ):
            return _reject("bad-weights", "weights must be non-empty, finite, >= 0, finite sum")
    return None
