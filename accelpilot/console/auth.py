"""Who may use the console: loopback is trusted, an exposed console needs tokens.

Bound to a loopback address (the default, ``127.0.0.1``) only local processes can connect, and
every request acts as the local operator ``local``. Bound to anything else, every ``/api``
request needs ``Authorization: Bearer <token>``; a token carries a name and a role:

- ``viewer``: read everything (``GET``);
- ``operator``: also act (``POST``: sliders, accept/dismiss, mode); the name becomes the actions'
  issuer ``operator:<name>``.

Tokens come from the config's ``console.tokens`` (a secret): comma-separated
``name:role:token`` entries, e.g. ``alice:operator:s3cret,wall:viewer:l00k``.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from typing import Literal

from accelpilot.errors import ConfigError

Role = Literal["viewer", "operator"]
ROLES: tuple[Role, ...] = ("viewer", "operator")
MIN_TOKEN_CHARS = 8


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: Role

    @property
    def can_act(self) -> bool:
        return self.role == "operator"


LOCAL = Principal("local", "operator")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_tokens(spec: str) -> dict[str, Principal]:
    """``name:role:token,...`` -> ``{token: Principal}``; a malformed entry is a ConfigError."""
    out: dict[str, Principal] = {}
    for n, entry in enumerate(e.strip() for e in spec.split(",")):
        if not entry:
            continue
        parts = entry.split(":", 2)
        if len(parts) != 3:
            raise ConfigError(
                f"console.tokens entry {n + 1}: expected name:role:token (role viewer|operator)"
            )
        name, role, token = parts
        if role not in ROLES:
            raise ConfigError(
                f"console.tokens entry {n + 1} ({name}): role must be viewer or operator"
            )
        if not name or len(token) < MIN_TOKEN_CHARS:
            raise ConfigError(
                f"console.tokens entry {n + 1} ({name}): needs a name and a token of at least "
                f"{MIN_TOKEN_CHARS} characters"
            )
        out[token] = Principal(name, "operator" if role == "operator" else "viewer")
    return out


@dataclass(frozen=True)
class Auth:
    """``required``: tokens are checked (exposed console); else everyone is :data:`LOCAL`."""

    required: bool
    tokens: dict[str, Principal]

    @classmethod
    def for_bind(cls, host: str, token_spec: str) -> Auth:
        tokens = parse_tokens(token_spec)
        required = not is_loopback(host)
        if required and not tokens:
            raise ConfigError(
                f"console host {host!r} is not a loopback address: set console.tokens "
                "(env ACCELPILOT_CONSOLE__TOKENS, entries name:role:token) or bind 127.0.0.1"
            )
        return cls(required, tokens)

    def principal(self, authorization: str | None) -> Principal | None:
        """The caller, or ``None`` when a token is required and missing or wrong."""
        if not self.required:
            return LOCAL
        if not authorization or not authorization.startswith("Bearer "):
            return None
        given = authorization.removeprefix("Bearer ").strip().encode()
        for token, who in self.tokens.items():
            if hmac.compare_digest(token.encode(), given):
                return who
        return None
