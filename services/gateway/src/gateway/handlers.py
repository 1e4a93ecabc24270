"""The gateway's HTTP endpoints: its own (catalog, tickets, score updates) and the proxied ones.

``POST /api/scoreboard/update`` reads top-down: the edge verifies the token
(:func:`gateway.edge.require_principal`), admission checks every rule in the contract's order
(docs/openapi.yaml: 401, 403, 409, 429, 400) and claims the action in one Redis round trip
(:mod:`gateway.admission`), then the command is published to Kafka (202), or the claim released
and 503 answered when Kafka does not take it (:mod:`gateway.publisher`).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from common.addresses import address_bucket
from common.bodies import json_response, read_json
from common.events import AppliedNotice, ScoreCommand
from common.problems import BadRequest, Forbidden, Problem
from common.rejections import Rejection
from gateway.components import components_key
from gateway.edge import (
    authenticate,
    client_address,
    require_principal,
    websocket_token,
)
from gateway.models import TicketRequest, UpdateRequest, prefer_wait
from gateway.ratelimit import Limit
from gateway.timestamps import isoformat

NO_STORE = {"Cache-Control": "no-store"}


class NotAnUpgrade(BadRequest, Rejection):
    """400: a plain request to the WebSocket route."""

    reason = "ws_not_an_upgrade"


class NotYourScore(Forbidden, Rejection):
    """403: ``user_id`` in the body is not the token's subject."""

    reason = "user_mismatch"


async def action_types(request: web.Request) -> web.Response:
    """``GET /api/actions/types``: the public catalog."""
    return json_response(
        request.app[components_key].catalog.listing(),
        headers={"Cache-Control": "public, max-age=60"},
    )


async def issue_ticket(request: web.Request) -> web.Response:
    """``POST /api/actions``: start an action; returns its signed ticket (201)."""
    parts = request.app[components_key]
    principal = await require_principal(request)
    await parts.limiter.enforce(
        Limit("actions_address", client_address(request), parts.rate_policy.actions_address)
    )
    body = await read_json(request, TicketRequest)
    spec = parts.catalog.get(body.action_type)
    ticket = await parts.tickets.issue(principal.user_id, body.action_type, spec)
    parts.metrics.tickets_issued.labels(ticket.action_type).inc()
    return json_response(
        {
            "action_id": str(ticket.action_id),
            "action_type": ticket.action_type,
            "points": spec.points,
            "issued_at": isoformat(ticket.issued_at),
            "expires_at": isoformat(ticket.expires_at),
            "action_hash": parts.signer.sign(ticket),
        },
        status=201,
        headers=NO_STORE,
    )


async def submit_update(request: web.Request) -> web.Response:
    """``POST /api/scoreboard/update``: redeem a ticket; 202 once Kafka has the command."""
    parts = request.app[components_key]
    started = asyncio.get_running_loop().time()
    # The live account checks run in the admission round trip below; until then every early
    # answer (a bad body, someone else's user id) first makes them, keeping the contract's order.
    principal = await require_principal(request, check_account=False)
    try:
        body = await read_json(request, UpdateRequest)
        wait_s = prefer_wait(request.headers.getall("Prefer", []))
    except Problem:
        await parts.authenticator.check_account(principal)
        raise
    if body.user_id is not None and body.user_id != principal.user_id:
        await parts.authenticator.check_account(principal)
        raise NotYourScore("you can only update your own score")
    policy = parts.rate_policy
    limits = (
        Limit("update_user", str(principal.user_id), policy.update_user),
        Limit("update_address", client_address(request), policy.update_address),
    )
    redeemed = await parts.admission.redeem(
        principal, body.action_id, body.action_type, body.action_hash, body.points, limits
    )
    spec = redeemed.spec
    command = ScoreCommand(
        action_id=body.action_id,
        user_id=principal.user_id,
        action_type=redeemed.ticket.action_type,
        points=spec.points,
        issued_at=redeemed.ticket.issued_at,
        accepted_at=redeemed.claimed_at,
    )
    accepted = {"status": "accepted", "action_id": command.action_id, "points": spec.points}
    if wait_s is None:
        await parts.publisher.publish_claimed(command)
        return json_response(accepted, status=202, headers=NO_STORE)

    # Registered before publishing, so even an instant "applied" notice cannot be missed.
    async with parts.waiters.expect(body.action_id) as applied_future:
        await parts.publisher.publish_claimed(command)
        remaining = wait_s - (asyncio.get_running_loop().time() - started)
        try:
            applied: AppliedNotice | None = await asyncio.wait_for(
                applied_future, max(remaining, 0)
            )
        except TimeoutError:
            applied = None
    headers = {**NO_STORE, "Preference-Applied": f"wait={wait_s}"}
    parts.metrics.wait_outcomes.labels("timeout" if applied is None else "applied").inc()
    if applied is None:
        return json_response(accepted, status=202, headers=headers)
    return json_response(
        {
            "status": "applied",
            "action_id": str(applied.action_id),
            "user_id": str(applied.user_id),
            "score": applied.score,
            "rank": applied.rank,
        },
        status=200,
        headers=headers,
    )


async def auth_route(request: web.Request) -> web.Response:
    """``/api/auth/*``: to the auth service, under a per-address limit."""
    parts = request.app[components_key]
    await parts.limiter.enforce(
        Limit("auth_address", client_address(request), parts.rate_policy.auth_address)
    )
    return await parts.proxy.forward(request, "auth", keep_authorization=True)


async def jwks_route(request: web.Request) -> web.Response:
    """``GET /.well-known/jwks.json``: auth's public keys."""
    return await request.app[components_key].proxy.forward(request, "auth")


async def _limit_reads(request: web.Request) -> None:
    parts = request.app[components_key]
    bucket = address_bucket(client_address(request))
    await parts.limiter.enforce(Limit("reads_address", bucket, parts.rate_policy.reads_address))


async def board_route(request: web.Request) -> web.Response:
    """``GET /api/scoreboard/top`` and ``/users/{id}``: public reads from the broadcaster
    (through the gateway's micro-cache, gateway.board_cache), limited per address bucket."""
    await _limit_reads(request)
    parts = request.app[components_key]
    return await parts.board_cache.get(
        request.rel_url.raw_path_qs, lambda: parts.proxy.forward(request, "broadcaster")
    )


async def board_user_route(request: web.Request) -> web.Response:
    """``/api/boards/{board}/{window}/users|around/{user_id|me}``: ``me`` is the verified
    token's user (401 without one); any other id is a public read, as ``board_route``."""
    if request.match_info["user_id"] != "me":
        return await board_route(request)
    principal = await require_principal(request)
    return await request.app[components_key].proxy.forward(
        request, "broadcaster", user_id=principal.user_id
    )


async def me_route(request: web.Request) -> web.Response:
    """``GET /api/scoreboard/me``: the broadcaster answers for the verified token's user."""
    principal = await require_principal(request)
    return await request.app[components_key].proxy.forward(
        request, "broadcaster", user_id=principal.user_id
    )


async def ws_route(request: web.Request) -> web.WebSocketResponse:
    """``GET /ws/scoreboard``: anyone may watch; a presented token must verify (401 otherwise).

    Before anything else: a valid upgrade (400), then a free slot for the address and the
    process and the address's connect rate (429/503, gateway.ws_admission).
    """
    parts = request.app[components_key]
    if not web.WebSocketResponse().can_prepare(request).ok:
        raise NotAnUpgrade("GET /ws/scoreboard must be a WebSocket upgrade (RFC 6455)")
    bucket = address_bucket(client_address(request))
    with parts.ws_slots.hold(bucket):
        await parts.limiter.enforce(
            Limit("ws_address", bucket, parts.rate_policy.ws_connect_address)
        )
        token, bearer_subprotocol = websocket_token(request)
        principal = None
        if token is not None:
            principal = await authenticate(request, token)
        return await parts.proxy.websocket(
            request, principal, bearer_subprotocol=bearer_subprotocol
        )
