"""The gateway's own HTTP endpoints: the action catalog, tickets and score updates.

``POST /api/scoreboard/update`` runs the seed's security validation flow in its order: 401 token,
403 someone else's user id or a banned user, 409 action already submitted, 429 rate limits (user,
then address), 400 ticket/hash/type checks, 400 unreasonable completions; then the action is
claimed exactly once (SET NX) and the command published to Kafka (202), or released again and
answered 503 when Kafka does not take it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import structlog
from aiohttp import web

from common.bodies import json_response, read_json
from common.events import ScoreCommand
from common.problems import Forbidden, Problem, ServiceUnavailable
from gateway.admission import admission_key
from gateway.authn import Principal, authenticator_key, require_principal
from gateway.catalog import ActionSpec, catalog_key
from gateway.metrics import metrics_key
from gateway.models import TicketRequest, UpdateRequest, prefer_wait
from gateway.publisher import PublishFailed, publisher_key
from gateway.ratelimit import Limit, rate_limiter_key, rate_policy_key
from gateway.security import Rejection, client_address
from gateway.tickets import (
    AlreadyCompleted,
    Ticket,
    check_completion,
    isoformat,
    ticket_store_key,
)
from gateway.waiters import Applied, waiters_key

log = structlog.get_logger(__name__)

NO_STORE = {"Cache-Control": "no-store"}


class NotYourScore(Forbidden, Rejection):
    """403: ``user_id`` in the body is not the token's subject."""

    reason = "user_mismatch"


class CommandNotRecorded(ServiceUnavailable):
    """503: Kafka did not take the command; nothing was recorded, a retry is safe."""

    def __init__(self) -> None:
        super().__init__(
            "the score update could not be recorded right now; nothing was applied, "
            "retry the same request",
            headers={"Retry-After": "1"},
        )


async def action_types(request: web.Request) -> web.Response:
    """``GET /api/actions/types``: the public catalog."""
    return json_response(
        request.app[catalog_key].listing(), headers={"Cache-Control": "public, max-age=60"}
    )


async def issue_ticket(request: web.Request) -> web.Response:
    """``POST /api/actions``: start an action; returns its signed ticket (201)."""
    app = request.app
    principal = await require_principal(request)
    await app[rate_limiter_key].enforce(
        Limit("actions_address", client_address(request), app[rate_policy_key].actions_address)
    )
    body = await read_json(request, TicketRequest)
    spec = app[catalog_key].get(body.action_type)
    ticket, action_hash = await app[ticket_store_key].issue(principal.user_id, body.action_type)
    app[metrics_key].tickets_issued.labels(ticket.action_type).inc()
    return json_response(
        {
            "action_id": str(ticket.action_id),
            "action_type": ticket.action_type,
            "points": spec.points,
            "issued_at": isoformat(ticket.issued_at),
            "expires_at": isoformat(ticket.expires_at),
            "action_hash": action_hash,
        },
        status=201,
        headers=NO_STORE,
    )


async def submit_update(request: web.Request) -> web.Response:
    """``POST /api/scoreboard/update``: redeem a ticket; 202 once Kafka has the command."""
    app = request.app
    started = asyncio.get_running_loop().time()
    # The live account checks run in the admission round trip below; until then every early
    # answer (a bad body, someone else's user id) first makes them, keeping the seed's order.
    principal = await require_principal(request, check_account=False)
    authenticator = app[authenticator_key]
    try:
        body = await read_json(request, UpdateRequest)
        wait_s = prefer_wait(request.headers.getall("Prefer", []))
    except Problem:
        await authenticator.check_account(principal)
        raise
    if body.user_id is not None and body.user_id != principal.user_id:
        await authenticator.check_account(principal)
        raise NotYourScore("you can only update your own score")
    policy = app[rate_policy_key]
    limits = (
        Limit("update_user", str(principal.user_id), policy.update_user),
        Limit("update_address", client_address(request), policy.update_address),
    )
    now = datetime.now(UTC)
    ticket, spec = await _redeem(request, principal, body, limits, now)
    command = ScoreCommand(
        action_id=body.action_id,
        user_id=principal.user_id,
        action_type=ticket.action_type,
        points=spec.points,
        issued_at=ticket.issued_at,
        accepted_at=now,
    )
    accepted = {"status": "accepted", "action_id": str(command.action_id), "points": spec.points}
    if wait_s is None:
        await _publish_or_release(request, command, ticket)
        return json_response(accepted, status=202, headers=NO_STORE)

    # Registered before publishing, so even an instant "applied" notice cannot be missed.
    async with app[waiters_key].expect(body.action_id) as applied_future:
        await _publish_or_release(request, command, ticket)
        remaining = wait_s - (asyncio.get_running_loop().time() - started)
        try:
            applied: Applied | None = await asyncio.wait_for(applied_future, max(remaining, 0))
        except TimeoutError:
            applied = None
    headers = {**NO_STORE, "Preference-Applied": f"wait={wait_s}"}
    app[metrics_key].wait_outcomes.labels("timeout" if applied is None else "applied").inc()
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


async def _redeem(
    request: web.Request,
    principal: Principal,
    body: UpdateRequest,
    limits: tuple[Limit, ...],
    now: datetime,
) -> tuple[Ticket, ActionSpec]:
    """Admit the update and claim its ticket (401/403/409/429/400 in the seed's order)."""
    app = request.app
    store = app[ticket_store_key]
    catalog = app[catalog_key]
    spec = catalog.find(body.action_type)
    redeemed = None
    if spec is not None and store.signer.verify_completion(
        body.action_hash, body.action_id, principal.user_id, body.action_type
    ):
        # The usual case: every check and the claim in one round trip.
        redeemed = await app[admission_key].redeem(
            principal,
            body.action_id,
            limits,
            action_type=body.action_type,
            spec=spec,
            points=body.points,
            now=now,
        )
        if redeemed.claimed:
            return redeemed.ticket, spec
    # Anything else (a bad or version-1 hash, an unknown type, an older gateway's ticket):
    # check in Python, then claim.
    stored = (
        redeemed.ticket
        if redeemed is not None
        else await app[admission_key].admit(principal, body.action_id, limits)
    )
    ticket, spec = check_completion(
        stored,
        user_id=principal.user_id,
        action_type=body.action_type,
        action_hash=body.action_hash,
        points=body.points,
        catalog=catalog,
        signer=store.signer,
        now=now,
    )
    if not await store.claim(ticket, now):
        raise AlreadyCompleted("this action was already completed")
    return ticket, spec


async def _publish_or_release(request: web.Request, command: ScoreCommand, ticket: Ticket) -> None:
    """Publish the claimed command; on any failure release the claim so a retry can succeed."""
    app = request.app
    try:
        await app[publisher_key].publish(command)
    except BaseException as exc:
        try:
            # Shielded: even a cancelled request must not leave the action claimed but unsent.
            await asyncio.shield(app[ticket_store_key].release(ticket, command.accepted_at))
        except Exception:
            log.exception("release_failed", action_id=str(command.action_id))
        if isinstance(exc, PublishFailed):
            raise CommandNotRecorded from None
        raise
