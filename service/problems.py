"""What the domain says when it cannot do what was asked, without HTTP: a kind (the class), a
stable code for clients, a message for people and the request field at fault.

The model lifecycle (registry), the ranking path (ranking, candidates) and the KServe shim raise
these; service.api.errors maps each kind to its HTTP status, in one table beside the error shape.
"""

from __future__ import annotations


class Problem(Exception):
    def __init__(self, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


class InvalidInput(Problem):
    """The request asks for something that cannot be: a value, a split, a name (its field named)."""


class TooLarge(Problem):
    """The request is over a size limit (candidates, batch)."""


class NotFound(Problem):
    """No such model, version or folder."""


class Conflict(Problem):
    """The state of the models forbids it now: not ready, serving, another interface, no history."""


class Unavailable(Problem):
    """Something the service depends on is down: the control plane, the repository, no model yet."""
