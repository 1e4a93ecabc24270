"""HTTP edges of the auth API: parse, call the domain, shape the response."""

from __future__ import annotations

from aiohttp import web

from auth.components import Components, components_key
from auth.metrics import count_outcome
from auth.models import (
    LoginRequest,
    RefreshRequest,
    RegisterRequest,
    RegisterResponse,
    TokenResponse,
)
from auth.sessions import Grant
from auth.tokens import InvalidAccessToken
from common.addresses import client_address_key
from common.bodies import json_response, read_json

# RFC 6749 5.1: responses carrying tokens must not be cached anywhere.
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


async def register(request: web.Request) -> web.Response:
    """``POST /api/auth/register`` → 201 ``{user_id, username}``; 409 taken, 429 throttled."""
    parts = request.app[components_key]
    with count_outcome(parts.metrics.registrations):
        body = await read_json(request, RegisterRequest)
        account = await parts.accounts.register(
            body.username, body.password, request[client_address_key]
        )
    reply = RegisterResponse(user_id=account.user_id, username=account.username)
    return json_response(reply.model_dump(mode="json"), status=201)


async def login(request: web.Request) -> web.Response:
    """``POST /api/auth/login`` → 200 tokens; 401, 403 (banned), 429 (throttled)."""
    parts = request.app[components_key]
    with count_outcome(parts.metrics.logins):
        body = await read_json(request, LoginRequest)
        account = await parts.accounts.authenticate(
            body.username, body.password, request[client_address_key]
        )
        grant = await parts.sessions.open(account)
        return _token_response(parts, grant)


async def refresh(request: web.Request) -> web.Response:
    """``POST /api/auth/refresh`` → 200 tokens; the presented refresh token is spent."""
    parts = request.app[components_key]
    with count_outcome(parts.metrics.refreshes):
        body = await read_json(request, RefreshRequest)
        grant = await parts.sessions.rotate(body.refresh_token)
        return _token_response(parts, grant)


async def logout(request: web.Request) -> web.Response:
    """``POST /api/auth/logout`` (Bearer) → 204; the session's tokens stop working."""
    parts = request.app[components_key]
    with count_outcome(parts.metrics.logouts):
        token = await parts.tokens.verify(_bearer(request))
        await parts.sessions.revoke(token.session_id)
    return web.Response(status=204)


async def jwks(request: web.Request) -> web.Response:
    """``GET /.well-known/jwks.json``: every key that may have signed a live token, or soon will."""
    parts = request.app[components_key]
    cache = f"public, max-age={parts.settings.jwks_max_age_s}"
    return json_response(parts.keystore.jwks(), headers={"Cache-Control": cache})


def _token_response(parts: Components, grant: Grant) -> web.Response:
    access = parts.tokens.issue(
        user_id=grant.account.user_id,
        username=grant.account.username,
        roles=grant.account.roles,
        session_id=grant.session_id,
    )
    reply = TokenResponse(
        access_token=access.token, expires_in=access.expires_in, refresh_token=grant.refresh_token
    )
    return json_response(reply.model_dump(mode="json"), headers=_NO_STORE)


def _bearer(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidAccessToken("missing_token")
    return token.strip()


def add_routes(app: web.Application) -> None:
    """Mount the auth API on ``app``."""
    app.router.add_post("/api/auth/register", register)
    app.router.add_post("/api/auth/login", login)
    app.router.add_post("/api/auth/refresh", refresh)
    app.router.add_post("/api/auth/logout", logout)
    app.router.add_get("/.well-known/jwks.json", jwks)
