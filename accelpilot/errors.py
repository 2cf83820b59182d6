"""The one error tree of accelpilot.

Every error says what went wrong and, where there is one, what the user can do about it.
Vendor and library errors are translated at the boundary and chained with ``raise ... from e``.
"""

from __future__ import annotations


class AccelpilotError(Exception):
    """Base of every error accelpilot raises on purpose."""


class ConfigError(AccelpilotError):
    """The configuration is broken; the message names the field and the problem."""


class SchemaError(AccelpilotError):
    """A message could not be accepted. ``reason`` is short and machine-groupable."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class DecodeError(SchemaError):
    """The bytes are not a well-formed payload of the expected schema."""


class UnsupportedVersionError(SchemaError):
    """The payload declares a schema version this build does not understand."""


class InvalidPayloadError(SchemaError):
    """The payload is well-formed but violates the schema's rules or physics."""


class StackError(AccelpilotError):
    """A step of bringing the local Kafka/InfluxDB stack up or down failed."""

    def __init__(self, step: str, why: str) -> None:
        self.step = step
        self.why = why
        super().__init__(f"stack step '{step}' failed: {why}")


class ServiceUnavailableError(AccelpilotError):
    """A service (broker, database) cannot be reached."""

    @classmethod
    def kafka(cls, bootstrap_servers: str, error: Exception) -> ServiceUnavailableError:
        """The broker at ``bootstrap_servers`` refused or never answered a client's start."""
        return cls(
            f"cannot reach Kafka at {bootstrap_servers}: {error}; is the broker up "
            "(`accelpilot stack status`)?"
        )


class BackendError(AccelpilotError):
    """A device backend (NVML, AMD SMI, /sys, the simulator) failed; the message says how."""


class ActuationError(AccelpilotError):
    """A device setting could not be applied (unsupported, out of range, permission)."""


class KeyFileError(AccelpilotError):
    """A key file is missing, unreadable, not PEM, or not an Ed25519 key; the message names it."""


class SeqStateError(AccelpilotError):
    """The replay-state file cannot be read, parsed or written; the message names it."""


class AuditLogError(AccelpilotError):
    """The audit log cannot be opened, continued or written; the message names the file."""


class DiskBufferError(AccelpilotError):
    """The agent's disk buffer cannot be opened or written (busy, permissions, disk full)."""
