"""Security events: every rejection is logged as one structured event and counted by reason.

Also where the client's address comes from (the peer, or a trusted proxy's last hop), since
rate limits, logs and the headers sent upstream all need the same answer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from common.middlewares import Handler, problem_response, request_id_key
from common.problems import BadRequest, Problem, ServiceUnavailable
from gateway.metrics import metrics_key

log = structlog.get_logger(__name__)

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The authenticated user id (set once the token verified), for the security log.
user_key = web.RequestKey("user_id", str)
address_key = web.RequestKey("client_address", str)
trusted_proxies_key: web.AppKey[tuple[IpNetwork, ...]] = web.AppKey("trusted_proxies")


class Rejection:
    """Mixin for problems that reject a request for a security or abuse reason.

    ``reason`` is a short, fixed label (it becomes a Prometheus label value).
    """

    reason: str = "rejected"


def resolve_client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[IpNetwork]
) -> str:
    """The client's address: the peer, or the last X-Forwarded-For hop if the peer is trusted.

    Only the last hop is believed: it is the one our trusted proxy appended; anything before it
    came from the client and can be forged.
    """
    if peer is None:
        return "unknown"
    if forwarded_for and trusted:
        try:
            peer_ip = ipaddress.ip_address(peer)
        except ValueError:
            return peer
        if any(peer_ip in net for net in trusted):
            hops = [h.strip() for value in forwarded_for for h in value.split(",")]
            hops = [h for h in hops if h]
            if hops:
                try:
                    return str(ipaddress.ip_address(hops[-1]))
                except ValueError:
                    log.warning("bad_forwarded_for", peer=peer, last_hop=hops[-1][:64])
    return peer


def client_address(request: web.Request) -> str:
    """The request's client address (computed once per request)."""
    if address_key in request:
        return request[address_key]
    trusted: tuple[IpNetwork, ...] = request.app[trusted_proxies_key]
    address = resolve_client_address(
        request.remote, request.headers.getall("X-Forwarded-For", []), trusted
    )
    request[address_key] = address
    return address


@web.middleware
async def rejection_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render problems here (so request metrics see the real status) and audit rejections.

    Redis failures become 503: without Redis no ticket, limit or revocation can be checked.
    """
    try:
        return await handler(request)
    except Problem as problem:
        reason: str | None = None
        if isinstance(problem, Rejection):
            reason = problem.reason
        elif isinstance(problem, BadRequest):
            reason = "invalid_request"
        if reason is not None:
            request.app[metrics_key].rejections.labels(reason).inc()
            log.warning(
                "security",
                reason=reason,
                status=problem.status,
                user=request.get(user_key),
                address=client_address(request),
                request_id=request.get(request_id_key),
                method=request.method,
                path=request.path,
            )
        return problem_response(problem, request.get(request_id_key))
    except RedisError as exc:
        # Tickets, limits and revocations live in Redis: without it nothing can be decided.
        log.warning("redis_unavailable", error=repr(exc), path=request.path)
        unavailable = ServiceUnavailable(
            "a dependency is unavailable; retry shortly", headers={"Retry-After": "1"}
        )
        return problem_response(unavailable, request.get(request_id_key))
