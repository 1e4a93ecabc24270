"""The gateway's parts, built once per app (see app.py) and reached by handlers via one AppKey."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:  # the parts import the edge, which reaches them through this module
    from gateway.accounts import Authenticator
    from gateway.admission import Admission
    from gateway.board_cache import BoardCache
    from gateway.catalog import Catalog
    from gateway.claims import Claims
    from gateway.jwks import JwksCache
    from gateway.metrics import GatewayMetrics
    from gateway.proxy import Proxy
    from gateway.publisher import CommandPublisher
    from gateway.ratelimit import RateLimiter, RatePolicy
    from gateway.settings import Settings
    from gateway.signing import TicketSigner
    from gateway.tickets import TicketStore
    from gateway.waiters import AppliedWaiters
    from gateway.ws_admission import WebSocketSlots


@dataclass(frozen=True)
class Components:
    """Everything a request handler needs."""

    settings: Settings
    metrics: GatewayMetrics
    catalog: Catalog
    rate_policy: RatePolicy
    limiter: RateLimiter
    signer: TicketSigner
    tickets: TicketStore
    claims: Claims
    authenticator: Authenticator
    admission: Admission
    publisher: CommandPublisher
    waiters: AppliedWaiters
    jwks: JwksCache
    proxy: Proxy
    board_cache: BoardCache
    ws_slots: WebSocketSlots


components_key = web.AppKey("gateway_components", Components)
