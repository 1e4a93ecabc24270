"""Auth's edge: who the client is, and every 4xx logged as a security event naming the username.

The mechanisms are shared (:mod:`common.addresses`, :mod:`common.rejections`); what is auth's
own is the trust setting (the gateway is the only peer, so its last X-Forwarded-For hop is
believed when ``trust_forwarded_for`` is on) and the username a rejection concerns.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web
from aiohttp.typedefs import Middleware

from common.addresses import TrustedProxies, request_client_address
from common.problems import Problem
from common.rejections import Rejected, Rejection, rejection_middleware


class SecurityRejection(Rejection, Problem):
    """Base for auth's rejections: a machine-readable reason and the username involved.

    Combine it with the status class: ``class Banned(SecurityRejection, Forbidden)``.
    """

    username: str | None = None


def trusted_proxies(*, trust_forwarded_for: bool) -> TrustedProxies:
    """Auth trusts every peer's X-Forwarded-For, or none."""
    return TrustedProxies(every_peer=trust_forwarded_for)


def client_address(request: web.Request, *, trust_forwarded_for: bool) -> str:
    """The client's address: the peer, or the last X-Forwarded-For hop when trusted."""
    return request_client_address(request, trusted_proxies(trust_forwarded_for=trust_forwarded_for))


def _username(request: web.Request, error: Rejected) -> Mapping[str, object]:
    return {"username": getattr(error, "username", None)}


def security_middleware(*, trust_forwarded_for: bool) -> Middleware:
    """Resolve the client address for handlers, and log each 4xx as ``event="security"``."""
    return rejection_middleware(
        trusted_proxies(trust_forwarded_for=trust_forwarded_for), identity=_username
    )
