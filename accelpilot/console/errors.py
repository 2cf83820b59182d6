"""Console request errors: a status code and a reason the operator can act on.

They belong to the project's one error tree (:class:`~accelpilot.errors.AccelpilotError`); the
app turns them into ``{"detail": reason}`` responses and nothing is changed when one is raised.
"""

from __future__ import annotations

from accelpilot.errors import AccelpilotError


class ConsoleRequestError(AccelpilotError):
    """A request the console refuses; ``status`` is the HTTP status (4xx)."""

    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotFoundError(ConsoleRequestError):
    status = 404


class ConflictError(ConsoleRequestError):
    """The request is well-formed but the fleet's state does not allow it now."""

    status = 409


class InvalidRequestError(ConsoleRequestError):
    """The request names things that exist but asks for something out of range."""

    status = 422
