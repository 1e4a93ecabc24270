"""Domain errors that become RFC 9457 ``application/problem+json`` responses.

Services raise these (or subclasses) anywhere; :func:`common.web.problem_middleware` turns them
into responses in one place.
"""

from __future__ import annotations

from typing import Any


class Problem(Exception):
    """An error a client can act on: HTTP status, short title, human-readable detail."""

    status = 500
    title = "Internal Server Error"
    type_ = "about:blank"

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        title: str | None = None,
        type_: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        if title is not None:
            self.title = title
        if type_ is not None:
            self.type_ = type_
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        """The problem document."""
        return {
            "type": self.type_,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }


class BadRequest(Problem):
    """400: the request is malformed or fails validation."""

    status = 400
    title = "Bad Request"


class Unauthorized(Problem):
    """401: no valid credentials."""

    status = 401
    title = "Unauthorized"


class Forbidden(Problem):
    """403: authenticated, but not allowed."""

    status = 403
    title = "Forbidden"


class NotFound(Problem):
    """404."""

    status = 404
    title = "Not Found"


class Conflict(Problem):
    """409."""

    status = 409
    title = "Conflict"


class TooManyRequests(Problem):
    """429, with ``Retry-After`` in whole seconds."""

    status = 429
    title = "Too Many Requests"

    def __init__(self, detail: str, *, retry_after_s: float) -> None:
        seconds = max(1, int(retry_after_s + 0.999))
        super().__init__(detail, headers={"Retry-After": str(seconds)})


class ServiceUnavailable(Problem):
    """503: a dependency cannot take the request now; retrying the same request is safe."""

    status = 503
    title = "Service Unavailable"
