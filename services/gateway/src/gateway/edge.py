"""The gateway's edge: what every request passes before and after a handler.

Who the client is (the peer, or a trusted proxy's last hop: :mod:`common.addresses`), which token
it carries and whose it is, and the middlewares where every rejection is logged as a security
event and counted by reason (:mod:`common.rejections`) and Redis outages become 503
(:mod:`common.outages`). Domain modules below never see ``aiohttp.web``.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Middleware
from redis.exceptions import RedisError

from common.addresses import TrustedProxies, client_address_key
from common.outages import Outages
from common.rejections import Rejected, rejection_middleware
from gateway.components import components_key
from gateway.settings import Settings
from gateway.tokens import InvalidToken, Principal

# The authenticated user id (set once the token verified), for the security log.
user_key = web.RequestKey("user_id", str)


def client_address(request: web.Request) -> str:
    """The request's client address, as :func:`edge_middlewares` resolved it."""
    return request[client_address_key]


def edge_middlewares(settings: Settings) -> list[Middleware]:
    """The gateway's own middlewares, innermost last (inside the shared problem middleware).

    Every rejection (a :class:`common.rejections.Rejection` or a bad request) is logged as a
    security event with the user, when known, and counted by reason; Redis failures become 503:
    without Redis no ticket, limit or revocation can be checked.
    """

    def count(request: web.Request, reason: str) -> None:
        request.app[components_key].metrics.rejections.labels(reason).inc()

    def identity(request: web.Request, error: Rejected) -> dict[str, object]:
        return {"user": request.get(user_key)}

    # One middleware for both: each is a coroutine frame on every request.
    return [
        rejection_middleware(
            TrustedProxies.of(settings.trusted_proxies),
            every_client_error=False,
            count=count,
            identity=identity,
            outages=Outages(
                (RedisError,), retry_after_s=1, detail="a dependency is unavailable; retry shortly"
            ),
        ),
    ]


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
