"""Who the client is, and the one place where every rejection becomes a security event log."""

from __future__ import annotations

import ipaddress
from typing import Any

import structlog
from aiohttp import web

from common.middlewares import Handler, request_id_key
from common.problems import BadRequest, Problem

log = structlog.get_logger(__name__)

client_address_key = web.RequestKey("client_address", str)


class SecurityRejection(Problem):
    """Base for problems that carry a machine-readable reason and the username involved.

    Combine it with the status class: ``class Banned(SecurityRejection, Forbidden)``.

    The reason is for logs and metrics only; clients see the problem's detail, which for
    credential failures is deliberately the same whatever the reason.
    """

    reason: str = "rejected"
    username: str | None = None


def client_address(request: web.Request, *, trust_forwarded_for: bool) -> str:
    """The client's address: the peer, or the last X-Forwarded-For hop when trusted.

    Only the last hop is trusted: it is what our gateway appended; anything before it came from
    the client and may be forged.
    """
    if trust_forwarded_for:
        hops = [
            h.strip() for v in request.headers.getall("X-Forwarded-For", []) for h in v.split(",")
        ]
        hops = [h for h in hops if h]
        if hops:
            try:
                return str(ipaddress.ip_address(hops[-1]))
            except ValueError:
                log.warning("forwarded_for_unparsable", value=hops[-1][:64])
    return request.remote or "unknown"


def _reason(exc: Exception) -> str:
    if isinstance(exc, SecurityRejection):
        return exc.reason
    if isinstance(exc, BadRequest):
        return "invalid_request"
    if isinstance(exc, web.HTTPException):
        return exc.reason.lower().replace(" ", "_")
    return type(exc).__name__


def security_middleware(*, trust_forwarded_for: bool) -> Any:
    """Resolve the client address for handlers, and log each 4xx as ``event="security"``."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        address = client_address(request, trust_forwarded_for=trust_forwarded_for)
        request[client_address_key] = address
        try:
            return await handler(request)
        except (Problem, web.HTTPException) as exc:
            status = exc.status
            if 400 <= status < 500:
                log.warning(
                    "security",
                    reason=_reason(exc),
                    status=status,
                    username=getattr(exc, "username", None),
                    address=address,
                    method=request.method,
                    path=request.path,
                    request_id=request.get(request_id_key),
                )
            raise

    return middleware
