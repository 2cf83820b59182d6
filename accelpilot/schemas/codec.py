"""Encode and decode topic payloads (JSON via msgspec: typed, validating, and fast).

Decoding checks structure and types in one pass; a payload that declares a newer ``v`` than this
build supports raises :class:`UnsupportedVersionError`; anything else malformed raises
:class:`DecodeError`. Both carry a short ``reason`` for the dead-letter topic.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from accelpilot.errors import DecodeError, UnsupportedVersionError

T = TypeVar("T", bound=msgspec.Struct)

SUPPORTED_VERSION = 1

_encoder = msgspec.json.Encoder()
_decoders: dict[type[msgspec.Struct], msgspec.json.Decoder[msgspec.Struct]] = {}


class _Envelope(msgspec.Struct):
    v: int


_envelope_decoder = msgspec.json.Decoder(_Envelope)


def encode(payload: msgspec.Struct) -> bytes:
    return _encoder.encode(payload)


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
        _raise_if_newer(raw)
        raise DecodeError("schema", str(e)) from e
    except msgspec.DecodeError as e:  # not JSON at all (or truncated)
        raise DecodeError("not-json", str(e)) from e
    except UnicodeDecodeError as e:  # a string that is not UTF-8
        raise DecodeError("not-json", f"invalid UTF-8: {e}") from e
    except RecursionError as e:  # msgspec recurses per nesting level of untyped values
        raise DecodeError("schema", "JSON nested too deeply") from e
    version = payload.v  # type: ignore[attr-defined]
    if version != SUPPORTED_VERSION:
        raise UnsupportedVersionError(
            "unsupported-version", f"v={version}; this build reads v={SUPPORTED_VERSION}"
        )
    return payload


def _raise_if_newer(raw: bytes) -> None:
    try:
        envelope = _envelope_decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return
    if envelope.v != SUPPORTED_VERSION:
        raise UnsupportedVersionError(
            "unsupported-version", f"v={envelope.v}; this build reads v={SUPPORTED_VERSION}"
        )
