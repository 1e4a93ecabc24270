"""The gateway's edge: what every request passes before and after a handler.

Who the client is (the peer, or a trusted proxy's last hop), which token it carries and whose it
is, and the one middleware where problems are rendered and every rejection is logged as a
security event and counted by reason. Domain modules below never see ``aiohttp.web``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from common.middlewares import Handler, problem_response, request_id_key
from common.problems import BadRequest, Problem, ServiceUnavailable
from gateway.components import components_key
from gateway.rejections import Rejection
from gateway.tokens import InvalidToken, Principal

log = structlog.get_logger(__name__)

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The authenticated user id (set once the token verified), for the security log.
user_key = web.RequestKey("user_id", str)
address_key = web.RequestKey("client_address", str)


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
    trusted = request.app[components_key].settings.trusted_proxies
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
            request.app[components_key].metrics.rejections.labels(reason).inc()
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


def bearer_token(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header (None without the header)."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise InvalidToken("use 'Authorization: Bearer <token>'", reason="token_malformed")
    return token


def websocket_token(request: web.Request) -> tuple[str | None, bool]:
    """A WebSocket's token and whether it came as the ``bearer, <token>`` subprotocol pair.

    Browsers cannot set headers on a WebSocket, hence the query parameter and the subprotocol.
    """
    token = bearer_token(request)
    if token is not None:
        return token, False
    query_token = request.query.get("access_token")
    if query_token:
        return query_token, False
    offered = [
        p.strip()
        for value in request.headers.getall("Sec-WebSocket-Protocol", [])
        for p in value.split(",")
    ]
    lowered = [p.lower() for p in offered]
    if "bearer" in lowered:
        at = lowered.index("bearer")
        if at + 1 < len(offered) and offered[at + 1]:
            return offered[at + 1], True
        raise InvalidToken("send the token after the 'bearer' subprotocol", reason="token_missing")
    return None, False


async def authenticate(request: web.Request, token: str) -> Principal:
    """The principal of ``token``, live account checks included (the user id is recorded for
    the security log)."""
    principal = await request.app[components_key].authenticator.verifier.verify(token)
    request[user_key] = str(principal.user_id)
    await request.app[components_key].authenticator.check_account(principal)
    return principal


async def require_principal(request: web.Request, *, check_account: bool = True) -> Principal:
    """The verified principal of a request with a Bearer token (401 without one).

    ``check_account=False`` leaves the live account checks to the caller, which must make them
    (the update path does, in its single admission round trip).
    """
    token = bearer_token(request)
    if token is None:
        raise InvalidToken("this endpoint needs a Bearer access token", reason="token_missing")
    if check_account:
        return await authenticate(request, token)
    principal = await request.app[components_key].authenticator.verifier.verify(token)
    request[user_key] = str(principal.user_id)
    return principal
