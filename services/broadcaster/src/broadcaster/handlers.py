"""The board's internal REST API (only the gateway reaches it; it proxies these paths)."""

from __future__ import annotations

import re
import uuid

from aiohttp import web

from broadcaster.components import components_key
from common.bodies import json_response
from common.events import utcnow
from common.problems import BadRequest, Unauthorized

# Set by the gateway after it verified the access token; it strips it from client requests.
USER_HEADER = "X-Scoreboard-User-Id"
DEFAULT_LIMIT = 10
MAX_LIMIT = 100
_DIGITS = re.compile(r"[0-9]{1,4}")


class InvalidLimit(BadRequest):
    """``limit`` is not a whole number between 1 and 100."""

    def __init__(self) -> None:
        super().__init__(f"limit must be a whole number from 1 to {MAX_LIMIT}")


class InvalidUserId(BadRequest):
    """A user id that is not a UUID."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} is not a UUID")


class NotSignedIn(Unauthorized):
    """``/me`` without the gateway's user header: the caller is not authenticated."""

    def __init__(self) -> None:
        super().__init__("sign in to see your own standing (no authenticated user)")


def parse_limit(raw: str | None) -> int:
    """The ``limit`` query parameter: 1 to 100, 10 when absent."""
    if raw is None:
        return DEFAULT_LIMIT
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidLimit()
    return int(raw)


def parse_user_id(raw: str, what: str) -> uuid.UUID:
    """A UUID, or 400 naming ``what`` was wrong."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise InvalidUserId(what) from None


def header_user_id(request: web.Request) -> uuid.UUID | None:
    """The authenticated user the gateway vouches for, if any."""
    raw = request.headers.get(USER_HEADER)
    if raw is None or not raw.strip():
        return None
    return parse_user_id(raw.strip(), USER_HEADER)


async def top(request: web.Request) -> web.Response:
    """``GET /api/scoreboard/top?limit=N`` -> ``{entries, version, as_of}``."""
    limit = parse_limit(request.query.get("limit"))
    snapshot = await request.app[components_key].reader.top(limit)
    return json_response(
        {
            "entries": [e.as_json() for e in snapshot.entries],
            "version": snapshot.version,
            "as_of": utcnow().isoformat(),
        }
    )


async def user(request: web.Request) -> web.Response:
    """``GET /api/scoreboard/users/{user_id}`` -> ``{user_id, username, score, rank}``."""
    user_id = parse_user_id(request.match_info["user_id"], "user_id")
    standing = await request.app[components_key].reader.standing(user_id)
    return json_response(standing.as_json())


async def me(request: web.Request) -> web.Response:
    """``GET /api/scoreboard/me``: the standing of the user in ``X-Scoreboard-User-Id``."""
    user_id = header_user_id(request)
    if user_id is None:
        raise NotSignedIn()
    standing = await request.app[components_key].reader.standing(user_id, own=True)
    return json_response(standing.as_json())
