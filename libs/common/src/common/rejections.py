"""Security events: every rejected request is logged once, as ``event="security"`` with the reason
it was rejected for, and counted by that reason.

A service mounts :func:`rejection_middleware` inside :func:`common.middlewares.problem_middleware`
(which renders the problem afterwards, so the request metrics see the real status). The
middleware also resolves the client's address (:mod:`common.addresses`) for handlers and logs,
and, given :class:`common.outages.Outages`, turns a store's failures into 503 as
:func:`common.outages.outage_middleware` would inside it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from common.addresses import TrustedProxies, client_address_key, request_client_address
from common.middlewares import request_id_key
from common.outages import Outages
from common.problems import BadRequest, Problem

log = structlog.get_logger(__name__)

Rejected = Problem | web.HTTPException
Identity = Callable[[web.Request, Rejected], Mapping[str, object]]
"""The fields that say who was rejected (``username=``, ``user=``...), for the security log."""
Count = Callable[[web.Request, str], None]
"""Counts a rejection by its reason, e.g. ``lambda request, reason: c.labels(reason).inc()``."""


class Rejection:
    """Mixin for problems that reject a request for a security or abuse reason.

    Combine it with the status class: ``class Banned(Forbidden, Rejection)``. ``reason`` is a
    short, fixed label for logs and metrics (a Prometheus label value); clients see the
    problem's detail, which for credential failures is deliberately the same whatever the reason.
    """

    reason: str = "rejected"


def rejection_reason(error: Rejected, *, every_client_error: bool = True) -> str | None:
    """The reason ``error`` is logged and counted under, or None when it is not a rejection.

    :class:`Rejection` problems give their own reason, other bad requests ``invalid_request``.
    With ``every_client_error`` any other 4xx is one too (``not_found``, or the problem's class
    name); without it only those two kinds are.
    """
    if not 400 <= error.status < 500:
        return None
    if isinstance(error, Rejection):
        return error.reason
    if isinstance(error, BadRequest):
        return "invalid_request"
    if not every_client_error:
        return None
    if isinstance(error, web.HTTPException):
        return error.reason.lower().replace(" ", "_")
    return type(error).__name__


def _nobody(request: web.Request, error: Rejected) -> Mapping[str, object]:
    return {}


def rejection_middleware(
    trusted: TrustedProxies,
    *,
    every_client_error: bool = True,
    count: Count | None = None,
    identity: Identity = _nobody,
    outages: Outages | None = None,
) -> Middleware:
    """Resolve each request's client address (``request[client_address_key]``), and log each
    rejection as a security event: reason, status, ``identity``'s fields, address, method, path
    and request id; ``count`` counts it by reason. The problem is re-raised for the problem
    middleware to render. With ``outages``, their failures become
    :class:`common.outages.DependencyUnavailable` (a 503, which is no rejection).
    """
    stores = outages if outages is not None else Outages(failures=())

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        address = request_client_address(request, trusted)
        request[client_address_key] = address
        try:
            return await handler(request)
        except (Problem, web.HTTPException) as error:
            reason = rejection_reason(error, every_client_error=every_client_error)
            if reason is not None:
                if count is not None:
                    count(request, reason)
                log.warning(
                    "security",
                    reason=reason,
                    status=error.status,
                    **identity(request, error),
                    address=address,
                    method=request.method,
                    path=request.path,
                    request_id=request.get(request_id_key),
                )
            raise
        except stores.failures as exc:
            raise stores.unavailable(request, exc) from exc

    return middleware
