"""The host's gate for actions: every rejection reason, persistence, and property tests."""

from __future__ import annotations

import itertools
import json
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from accelpilot.collectors.action_verifier import (
    ActionVerifier,
    DeviceLimits,
    JsonSeqStore,
    SeqStateError,
    Verdict,
)
from accelpilot.errors import ConfigError
from accelpilot.schemas.actions import Action
from accelpilot.signing import Signer

HOST = "h1"
NOW_NS = 1_700_000_000_000_000_000
S = 1_000_000_000
LIMITS: Mapping[str, DeviceLimits] = {
    "gpu0": DeviceLimits(min_cap_w=100.0, max_cap_w=400.0, default_cap_w=300.0),
    "gpu1": DeviceLimits(min_cap_w=150.0, max_cap_w=350.0, default_cap_w=350.0),
}
KEY = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
SIGNER = Signer(KEY)
OTHER_SIGNER = Signer(Ed25519PrivateKey.from_private_bytes(b"\x02" * 32))
PUBLIC_KEYS = {SIGNER.key_id: KEY.public_key()}


class Clock:
    """A settable clock: tests move time explicitly, nothing sleeps."""

    def __init__(self, now_ns: int = NOW_NS) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns


class MemoryStore:
    def __init__(self, seq: int | None = None) -> None:
        self.seq = seq

    def load(self) -> int | None:
        return self.seq

    def save(self, seq: int) -> None:
        self.seq = seq


class FailingStore(MemoryStore):
    def save(self, seq: int) -> None:
        raise SeqStateError("disk full")


def unsigned(**overrides: Any) -> Action:
    fields: dict[str, Any] = {
        "action_id": "a-1",
        "host_id": HOST,
        "seq": 1,
        "kind": "set_power_cap",
        "device_id": "gpu0",
        "cap_w": 250.0,
        "issued_ts_ns": NOW_NS,
        "expires_ts_ns": NOW_NS + 60 * S,
        "issuer": "optimizer-1",
        "reason": "save energy",
        "key_id": "",
    }
    fields.update(overrides)
    return Action(**fields)


def signed(**overrides: Any) -> Action:
    return SIGNER.sign(unsigned(**overrides))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "actions-seq.json"


@pytest.fixture
def verifier(clock: Clock, state_path: Path) -> ActionVerifier:
    state_path.parent.mkdir()
    return ActionVerifier(PUBLIC_KEYS, HOST, clock, JsonSeqStore(state_path, HOST))


def check(v: ActionVerifier, action: Action) -> Verdict:
    return v.check(action, LIMITS)


# ---- accepted -------------------------------------------------------------------------------


def test_a_valid_action_is_accepted_and_its_seq_persisted(
    verifier: ActionVerifier, state_path: Path
) -> None:
    verdict = check(verifier, signed(seq=5))
    assert verdict == Verdict(True, "ok")
    assert verifier.last_accepted_seq == 5
    assert json.loads(state_path.read_text()) == {"v": 1, "host_id": HOST, "last_seq": 5}
    assert [p.name for p in state_path.parent.iterdir()] == [state_path.name]  # no temp left


@pytest.mark.parametrize(
    "overrides",
    [
        {"kind": "reset_power_cap", "cap_w": None},
        {"kind": "reset_power_cap", "device_id": None, "cap_w": None},
        {"kind": "park", "cap_w": None},
        {"kind": "wake", "device_id": None, "cap_w": None},
        {
            "kind": "set_load_weights",
            "device_id": None,
            "cap_w": None,
            "stream_id": "train",
            "weights": {"gpu0": 0.0, "gpu1": 3.0},
        },
        {"cap_w": 100.0},  # limits are inclusive
        {"cap_w": 400.0},
        {"mode": "advise"},
    ],
)
def test_every_kind_is_accepted_when_well_formed(
    verifier: ActionVerifier, overrides: dict[str, Any]
) -> None:
    assert check(verifier, signed(**overrides)).accepted


def test_clock_skew_is_tolerated_up_to_the_limit(verifier: ActionVerifier) -> None:
    assert check(verifier, signed(seq=1, issued_ts_ns=NOW_NS + 5 * S)).accepted
    rejected = check(verifier, signed(seq=2, issued_ts_ns=NOW_NS + 5 * S + 1))
    assert rejected.reason == "issued-in-future"


# ---- rejected, one reason each --------------------------------------------------------------


def forged_with_trusted_key_id() -> Action:
    return msgspec.structs.replace(OTHER_SIGNER.sign(unsigned()), key_id=SIGNER.key_id)


@pytest.mark.parametrize(
    ("action", "reason"),
    [
        (signed(host_id="h2"), "wrong-host"),
        (unsigned(key_id=SIGNER.key_id), "unsigned"),
        (OTHER_SIGNER.sign(unsigned()), "unknown-key"),
        (forged_with_trusted_key_id(), "bad-signature"),
        (msgspec.structs.replace(signed(), cap_w=260.0), "bad-signature"),
        (msgspec.structs.replace(signed(), signature=b"\x00" * 64), "bad-signature"),
        (msgspec.structs.replace(signed(), signature=b"short"), "bad-signature"),
        (signed(issued_ts_ns=NOW_NS - 61 * S, expires_ts_ns=NOW_NS - 1 * S), "expired"),
        (signed(issued_ts_ns=NOW_NS - 60 * S, expires_ts_ns=NOW_NS), "expired"),
        (signed(issued_ts_ns=NOW_NS + 6 * S, expires_ts_ns=NOW_NS + 60 * S), "issued-in-future"),
        (signed(expires_ts_ns=NOW_NS + 601 * S), "lifetime-too-long"),
        (signed(expires_ts_ns=NOW_NS), "bad-lifetime"),
        (signed(seq=-1), "bad-seq"),
        (signed(cap_w=400.5), "cap-out-of-range"),
        (signed(cap_w=99.9), "cap-out-of-range"),
        (signed(cap_w=float("nan")), "cap-out-of-range"),
        (signed(cap_w=float("inf")), "cap-out-of-range"),
        (signed(device_id="gpu7"), "unknown-device"),
        (signed(kind="park", device_id="gpu7", cap_w=None), "unknown-device"),
        (signed(cap_w=None), "missing-field"),
        (signed(device_id=None), "missing-field"),
        (signed(action_id=""), "missing-field"),
        (
            signed(kind="set_load_weights", device_id=None, cap_w=None, weights={"gpu0": 1.0}),
            "missing-field",
        ),
        (
            signed(kind="set_load_weights", device_id=None, cap_w=None, stream_id="s"),
            "missing-field",
        ),
        (signed(kind="reset_power_cap"), "unexpected-field"),
        (signed(weights={"gpu0": 1.0}), "unexpected-field"),
    ],
)
def test_each_bad_action_is_rejected_with_its_reason(
    verifier: ActionVerifier, state_path: Path, action: Action, reason: str
) -> None:
    verdict = check(verifier, action)
    assert (verdict.accepted, verdict.reason) == (False, reason)
    assert verifier.last_accepted_seq is None
    assert not state_path.exists()


@pytest.mark.parametrize(
    "weights",
    [
        {"gpu0": -1.0, "gpu1": 2.0},
        {"gpu0": float("nan")},
        {"gpu0": float("inf")},
        {},
        {"gpu0": 1e308, "gpu1": 1e308},
    ],
)
def test_bad_weights_are_rejected(verifier: ActionVerifier, weights: dict[str, float]) -> None:
    action = signed(
        kind="set_load_weights", device_id=None, cap_w=None, stream_id="s", weights=weights
    )
    assert check(verifier, action).reason == "bad-weights"


def test_all_zero_weights_mean_no_share_on_this_host(verifier: ActionVerifier) -> None:
    action = signed(
        kind="set_load_weights",
        device_id=None,
        cap_w=None,
        stream_id="s",
        weights={"gpu0": 0.0, "gpu1": 0.0},
    )
    assert check(verifier, action).accepted


def test_weights_naming_an_unknown_device_are_rejected(verifier: ActionVerifier) -> None:
    action = signed(
        kind="set_load_weights",
        device_id=None,
        cap_w=None,
        stream_id="s",
        weights={"gpu0": 1.0, "tpu9": 1.0},
    )
    assert check(verifier, action).reason == "unknown-device"


def test_replays_and_older_seqs_are_rejected(verifier: ActionVerifier) -> None:
    first = signed(seq=10)
    assert check(verifier, first).accepted
    assert check(verifier, first).reason == "replayed-seq"
    assert check(verifier, signed(seq=9, action_id="a-2")).reason == "replayed-seq"
    assert check(verifier, signed(seq=11, action_id="a-3")).accepted


def test_time_moves_an_action_from_accepted_to_expired(
    verifier: ActionVerifier, clock: Clock
) -> None:
    clock.now_ns = NOW_NS + 60 * S
    assert check(verifier, signed()).reason == "expired"
    clock.now_ns = NOW_NS + 60 * S - 1
    assert check(verifier, signed()).accepted


def test_rejected_actions_never_move_the_replay_state(verifier: ActionVerifier) -> None:
    assert check(verifier, signed(seq=3)).accepted
    forged_high = msgspec.structs.replace(
        OTHER_SIGNER.sign(unsigned(seq=1000)), key_id=SIGNER.key_id
    )
    assert check(verifier, forged_high).reason == "bad-signature"
    assert check(verifier, signed(seq=999, cap_w=999.0)).reason == "cap-out-of-range"
    assert check(verifier, signed(seq=998, expires_ts_ns=NOW_NS)).reason == "bad-lifetime"
    assert verifier.last_accepted_seq == 3
    assert check(verifier, signed(seq=4)).accepted


def test_a_forged_message_is_reported_as_forged_not_by_its_fields(
    verifier: ActionVerifier,
) -> None:
    assert check(verifier, signed(seq=50)).accepted
    forged = msgspec.structs.replace(
        OTHER_SIGNER.sign(unsigned(seq=1, issued_ts_ns=0, expires_ts_ns=1, cap_w=1.0)),
        key_id=SIGNER.key_id,
    )
    assert check(verifier, forged).reason == "bad-signature"


def test_an_unsaveable_seq_is_not_accepted(clock: Clock) -> None:
    v = ActionVerifier(PUBLIC_KEYS, HOST, clock, FailingStore())
    with pytest.raises(SeqStateError):
        check(v, signed(seq=1))
    assert v.last_accepted_seq is None


# ---- persistence ----------------------------------------------------------------------------


def test_a_restarted_verifier_still_refuses_replays(
    verifier: ActionVerifier, clock: Clock, state_path: Path
) -> None:
    action = signed(seq=42)
    assert check(verifier, action).accepted
    restarted = ActionVerifier(PUBLIC_KEYS, HOST, clock, JsonSeqStore(state_path, HOST))
    assert restarted.last_accepted_seq == 42
    assert check(restarted, action).reason == "replayed-seq"
    assert check(restarted, signed(seq=43)).accepted


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{not json",
        "[]",
        '{"v": 1, "host_id": "h1"}',
        '{"v": 1, "host_id": "h1", "last_seq": "7"}',
        '{"v": 2, "host_id": "h1", "last_seq": 7}',
        '{"v": 1, "host_id": "h2", "last_seq": 7}',
    ],
)
def test_a_corrupt_or_foreign_state_file_fails_closed(
    tmp_path: Path, clock: Clock, content: str
) -> None:
    path = tmp_path / "seq.json"
    path.write_text(content)
    with pytest.raises(SeqStateError, match=r"seq\.json"):
        ActionVerifier(PUBLIC_KEYS, HOST, clock, JsonSeqStore(path, HOST))


def test_an_unwritable_state_directory_raises_a_named_error(tmp_path: Path) -> None:
    store = JsonSeqStore(tmp_path / "missing-dir" / "seq.json", HOST)
    with pytest.raises(SeqStateError, match=r"seq\.json"):
        store.save(1)


# ---- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{"max_clock_skew_s": -1.0}, {"max_lifetime_s": 0.0}, {"max_lifetime_s": float("nan")}],
)
def test_bad_settings_are_config_errors(clock: Clock, kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        ActionVerifier(PUBLIC_KEYS, HOST, clock, MemoryStore(), **kwargs)
    with pytest.raises(ConfigError, match="host_id"):
        ActionVerifier(PUBLIC_KEYS, "", clock, MemoryStore())


@pytest.mark.parametrize(
    "limits",
    [
        (300.0, 100.0, 200.0),
        (100.0, 300.0, 50.0),
        (-1.0, 300.0, 200.0),
        (100.0, float("inf"), 200.0),
    ],
)
def test_inconsistent_device_limits_are_refused(limits: tuple[float, float, float]) -> None:
    with pytest.raises(ValueError, match="device limits"):
        DeviceLimits(*limits)


# ---- properties -----------------------------------------------------------------------------

names = st.text(min_size=1, max_size=8)
maybe_names = st.none() | names
any_floats = st.floats(allow_nan=True, allow_infinity=True)
ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@st.composite
def valid_actions(draw: st.DrawFn) -> Action:
    """An action the verifier accepts at NOW_NS with no previous seq."""
    kind = draw(
        st.sampled_from(["set_power_cap", "reset_power_cap", "set_load_weights", "park", "wake"])
    )
    fields: dict[str, Any] = {
        "kind": kind,
        "seq": draw(st.integers(0, 2**40)),
        "device_id": None,
        "cap_w": None,
    }
    if kind == "set_power_cap":
        fields["device_id"] = draw(st.sampled_from(sorted(LIMITS)))
        lim = LIMITS[fields["device_id"]]
        fields["cap_w"] = draw(st.floats(lim.min_cap_w, lim.max_cap_w))
    elif kind == "set_load_weights":
        fields["stream_id"] = draw(names)
        fields["weights"] = {d: draw(st.floats(0.0, 10.0)) for d in sorted(LIMITS)}
        if sum(fields["weights"].values()) <= 0:
            fields["weights"]["gpu0"] = 1.0
    else:
        fields["device_id"] = draw(st.sampled_from([None, *sorted(LIMITS)]))
    issued = NOW_NS + draw(st.integers(-300 * S, 5 * S))
    fields["issued_ts_ns"] = issued
    fields["expires_ts_ns"] = draw(st.integers(max(issued, NOW_NS) + 1, issued + 600 * S))
    fields["reason"] = draw(st.text(max_size=10))
    fields["mode"] = draw(st.sampled_from(["auto", "advise", "manual"]))
    return signed(**fields)


# Another value for every signed field (every field but ``signature``).
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "v": ints,
    "action_id": st.text(max_size=8),
    "host_id": st.text(max_size=8),
    "seq": ints,
    "kind": st.sampled_from(
        ["set_power_cap", "reset_power_cap", "set_load_weights", "park", "wake"]
    ),
    "device_id": maybe_names,
    "cap_w": st.none() | any_floats,
    "stream_id": maybe_names,
    "weights": st.none() | st.dictionaries(names, any_floats, max_size=3),
    "issued_ts_ns": ints,
    "expires_ts_ns": ints,
    "issuer": st.text(max_size=8),
    "mode": st.sampled_from(["auto", "advise", "manual"]),
    "reason": st.text(max_size=8),
    "key_id": st.text(max_size=16),
}


def test_field_strategies_cover_every_signed_field() -> None:
    assert set(FIELD_VALUES) == set(Action.__struct_fields__) - {"signature"}


@settings(max_examples=60, deadline=None)
@given(action=valid_actions(), data=st.data())
def test_any_single_byte_flip_of_the_signature_is_rejected(
    action: Action, data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(action.signature) - 1))
    mask = data.draw(st.integers(1, 255))
    sig = bytearray(action.signature)
    sig[index] ^= mask
    v = ActionVerifier(PUBLIC_KEYS, HOST, Clock(), MemoryStore())
    verdict = check(v, msgspec.structs.replace(action, signature=bytes(sig)))
    assert (verdict.accepted, verdict.reason) == (False, "bad-signature")
    assert check(v, action).accepted  # the untouched action was valid all along


@settings(max_examples=80, deadline=None)
@given(action=valid_actions(), field=st.sampled_from(sorted(FIELD_VALUES)), data=st.data())
def test_changing_any_signed_field_is_never_accepted(
    action: Action, field: str, data: st.DataObject
) -> None:
    new = data.draw(FIELD_VALUES[field].filter(lambda x: x != getattr(action, field)))
    v = ActionVerifier(PUBLIC_KEYS, HOST, Clock(), MemoryStore())
    assert not check(v, msgspec.structs.replace(action, **{field: new})).accepted
    assert v.last_accepted_seq is None
    assert check(v, action).accepted


@contextmanager
def state_file() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d) / "seq.json"


# (seq, forged?, restart the verifier before this one?)
steps = st.lists(st.tuples(st.integers(0, 30), st.booleans(), st.booleans()), max_size=15)


def _action_for(seq: int, forged: bool) -> Action:
    action = signed(seq=seq, action_id=f"a-{seq}")
    if forged:
        action = msgspec.structs.replace(OTHER_SIGNER.sign(action), key_id=SIGNER.key_id)
    return action


@settings(max_examples=40, deadline=None)
@given(steps=steps)
def test_accepted_seqs_are_strictly_increasing(steps: list[tuple[int, bool, bool]]) -> None:
    with state_file() as path:
        v = ActionVerifier(PUBLIC_KEYS, HOST, Clock(), JsonSeqStore(path, HOST))
        accepted = [seq for seq, forged, _ in steps if check(v, _action_for(seq, forged)).accepted]
    assert all(a < b for a, b in itertools.pairwise(accepted))
    # ... and nothing valid was refused: every genuine seq above the running max got in.
    expected: list[int] = []
    for seq, forged, _ in steps:
        if not forged and (not expected or seq > expected[-1]):
            expected.append(seq)
    assert accepted == expected


@settings(max_examples=40, deadline=None)
@given(steps=steps)
def test_replay_state_survives_new_verifier_instances(
    steps: list[tuple[int, bool, bool]],
) -> None:
    def fresh(path: Path) -> ActionVerifier:
        return ActionVerifier(PUBLIC_KEYS, HOST, Clock(), JsonSeqStore(path, HOST))

    with state_file() as path:
        reference = ActionVerifier(PUBLIC_KEYS, HOST, Clock(), MemoryStore())
        v = fresh(path)
        for seq, forged, restart in steps:
            if restart:
                v = fresh(path)
            action = _action_for(seq, forged)
            assert check(v, action) == check(reference, action)
        assert fresh(path).last_accepted_seq == reference.last_accepted_seq
