"""Encode and decode topic payloads (JSON via msgspec: typed, validating, and fast).

Decoding checks structure and types in one pass; a payload that declares a ``v`` this build does
not read raises :class:`UnsupportedVersionError`; anything else malformed raises
:class:`DecodeError`. Both carry a short ``reason`` for the dead-letter topic.

Every payload type reads v1 only unless it lists its versions in a ``VERSIONS`` class variable
(read all of them, write the last; each newer version a superset of the older ones).
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from accelpilot.errors import DecodeError, UnsupportedVersionError

T = TypeVar("T", bound=msgspec.Struct)

SUPPORTED_VERSION = 1  # of every payload type without a VERSIONS of its own

_encoder = msgspec.json.Encoder()
_decoders: dict[type[msgspec.Struct], msgspec.json.Decoder[msgspec.Struct]] = {}


class _Envelope(msgspec.Struct):
    v: int


_envelope_decoder = msgspec.json.Decoder(_Envelope)


def encode(payload: msgspec.Struct) -> bytes:
    return _encoder.encode(payload)


def versions_of(kind: type[msgspec.Struct]) -> tuple[int, ...]:
    """The versions of ``kind`` this build reads (the last one is what it writes)."""
    versions: tuple[int, ...] = getattr(kind, "VERSIONS", (SUPPORTED_VERSION,))
    return versions


def _unsupported(kind: type[msgspec.Struct], version: int) -> UnsupportedVersionError:
    readable = ", ".join(f"v={v}" for v in versions_of(kind))
    return UnsupportedVersionError(
        "unsupported-version", f"v={version}; this build reads {readable} of {kind.__name__}"
    )


def _decoder(kind: type[T]) -> msgspec.json.Decoder[T]:
    dec = _decoders.get(kind)
    if dec is None:
        dec = _decoders[kind] = msgspec.json.Decoder(kind)
    return dec  # type: ignore[return-value]


def decode(kind: type[T], raw: bytes) -> T:
    """Decode ``raw`` as a ``kind`` payload or raise a typed error with the reason."""
    try:
        payload = _decoder(kind).decode(raw)
    except msgspec.ValidationError as e:  # well-formed JSON, wrong shape or types
        _raise_if_unsupported(kind, raw)
        raise DecodeError("schema", str(e)) from e
    except msgspec.DecodeError as e:  # not JSON at all (or truncated)
        raise DecodeError("not-json", str(e)) from e
    except UnicodeDecodeError as e:  # a string that is not UTF-8
        raise DecodeError("not-json", f"invalid UTF-8: {e}") from e
    except RecursionError as e:  # msgspec recurses per nesting level of untyped values
        raise DecodeError("schema", "JSON nested too deeply") from e
    version = payload.v  # type: ignore[attr-defined]
    if version not in versions_of(kind):
        raise _unsupported(kind, version)
    return payload


def _raise_if_unsupported(kind: type[msgspec.Struct], raw: bytes) -> None:
    try:
        envelope = _envelope_decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return
    if envelope.v not in versions_of(kind):
        raise _unsupported(kind, envelope.v)
