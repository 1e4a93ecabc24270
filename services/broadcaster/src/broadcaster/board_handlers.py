"""The boards' REST API (the gateway proxies ``/api/boards*`` here; docs/openapi.yaml).

- ``GET /api/boards``: every board, its windows, each window's current period and next reset.
- ``GET /api/boards/{board}/{window}/top?limit=&cursor=&period=``: pages of up to 1,000.
- ``GET /api/boards/{board}/{window}/around/{user_id|me}?n=``: a player and n above and below.
- ``GET /api/boards/{board}/{window}/users/{user_id|me}``: score, rank, entries, top percent.
- ``GET /api/boards/{board}/{window}/users?ids=``: up to 100 players.

A cursor is opaque to clients: it names the period and the position (score, member) of the
page's last entry, so the next page starts right after that position in the board as it is now.
A player whose score does not change while a client pages appears exactly once; one that moves
may appear again or be passed, as in any list that changes while it is read. The cursor keeps
its period: a client paging across a reset keeps reading the period it started in.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from typing import Final

from aiohttp import web

from broadcaster.board_periods import BoardPeriods, Target
from broadcaster.components import components_key
from broadcaster.handlers import USER_HEADER, NotSignedIn, header_user_id, parse_user_id
from broadcaster.period_boards import Ranked, Slice
from common.bodies import json_response
from common.events import utcnow
from common.problems import BadRequest, NotFound

MAX_PAGE: Final = 1000
DEFAULT_PAGE: Final = 10
MAX_AROUND: Final = 50
DEFAULT_AROUND: Final = 5
MAX_IDS: Final = 100
_DIGITS = re.compile(r"[0-9]{1,5}")
_CURSOR = re.compile(
    r"c1\|([a-z0-9_-]{1,32})\|([a-z-]{1,16})\|([A-Za-z0-9_-]{1,32})\|(\d{1,19})\|(\d{16}:[0-9a-f]{32})"
)


class BadQuery(BadRequest):
    """A query parameter out of its range or malformed."""


class PlayerNotFound(NotFound):
    """No user with this id."""

    title = "Unknown Player"


def _whole(raw: str | None, name: str, low: int, high: int, default: int) -> int:
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise BadQuery(f"{name} must be a whole number from {low} to {high}")
    return int(raw)


def encode_cursor(t: Target, last: Ranked) -> str:
    """The cursor after ``last`` in ``t``'s period."""
    text = f"c1|{t.board.id}|{t.window}|{t.period.id}|{last.score}|{last.member}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(raw: str) -> tuple[str, str, str, int, str]:
    """(board, window, period, score, member) of a cursor; 400 when it is not one of ours."""
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode("ascii")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        text = ""
    match = _CURSOR.fullmatch(text) if len(raw) <= 200 else None
    if match is None:
        raise BadQuery("cursor is not a cursor this API returned (pass next_cursor unchanged)")
    board, window, period, score, member = match.groups()
    return board, window, period, int(score), member


def _me_or_id(request: web.Request) -> uuid.UUID:
    raw = request.match_info["user_id"]
    if raw == "me":
        user_id = header_user_id(request)
        if user_id is None:
            raise NotSignedIn()
        return user_id
    return parse_user_id(raw, "user_id")


def _periods(request: web.Request) -> BoardPeriods:
    return request.app[components_key].periods


async def _target(request: web.Request, period: str | None = None) -> Target:
    raw_period = request.query.get("period") if period is None else period
    return await _periods(request).resolve(
        request.match_info["board"], request.match_info["window"], raw_period, utcnow()
    )


def _head(t: Target) -> dict[str, object]:
    return {"board": t.board.id, "window": t.window, **t.period.as_json()}


async def boards(request: web.Request) -> web.Response:
    """``GET /api/boards``."""
    now = utcnow()
    catalog = await _periods(request).catalog()
    out = []
    for board in catalog.boards.values():
        d = board.definition
        windows = []
        for window in d.windows:
            period = board.period_at(window, now)
            windows.append(
                {
                    "window": window,
                    "current": None if period is None else period.as_json(),
                    "next_reset": None
                    if period is None or period.ends_at is None
                    else period.ends_at.isoformat(),
                }
            )
        out.append(
            {
                "board": board.id,
                "title": d.title,
                "action_types": None if d.action_types is None else list(d.action_types),
                "time_zone": d.time_zone,
                "windows": windows,
                "seasons": [s.model_dump(mode="json") for s in d.seasons],
            }
        )
    return json_response({"boards": out, "as_of": now.isoformat()})


async def top(request: web.Request) -> web.Response:
    """``GET /api/boards/{board}/{window}/top?limit=&cursor=&period=``."""
    limit = _whole(request.query.get("limit"), "limit", 1, MAX_PAGE, DEFAULT_PAGE)
    raw_cursor = request.query.get("cursor")
    after = None
    period = None
    if raw_cursor is not None:
        board, window, period, score, member = decode_cursor(raw_cursor)
        asked = request.query.get("period")
        if (board, window) != (request.match_info["board"], request.match_info["window"]) or (
            asked is not None and asked != period
        ):
            raise BadQuery("this cursor belongs to another board, window or period")
        after = (score, member)
    t = await _target(request, period)
    page = await _periods(request).page(t, limit, after)
    more = len(page.entries) == limit and (page.entries[-1].rank < page.players)
    return json_response(
        {
            **_head(t),
            "entries": [e.as_json() for e in page.entries],
            "players": page.players,
            "next_cursor": encode_cursor(t, page.entries[-1]) if more else None,
            "as_of": utcnow().isoformat(),
        }
    )


async def _standing_or_404(
    request: web.Request, t: Target, user_id: uuid.UUID, found: Slice | Ranked | None
) -> None:
    if found is None and not await _periods(request).user_exists(user_id):
        raise PlayerNotFound(f"no player with id {user_id}")


async def around(request: web.Request) -> web.Response:
    """``GET /api/boards/{board}/{window}/around/{user_id|me}?n=``."""
    user_id = _me_or_id(request)
    n = _whole(request.query.get("n"), "n", 0, MAX_AROUND, DEFAULT_AROUND)
    t = await _target(request)
    found = await _periods(request).around(t, user_id, n)
    if found.found is None:
        await _standing_or_404(request, t, user_id, None)
    return json_response(
        {
            **_head(t),
            "user_id": str(user_id),
            "rank": found.found,
            "entries": [e.as_json() for e in found.entries],
            "players": found.players,
            "as_of": utcnow().isoformat(),
        }
    )


def _standing(user_id: str, entry: Ranked | None, players: int) -> dict[str, object]:
    if entry is None:
        return {"user_id": user_id, "username": None, "score": 0, "rank": None, "entries": 0,
                "top_percent": None}  # fmt: skip
    return {
        **entry.as_json(),
        "top_percent": round(100 * entry.rank / players, 2) if players else None,
    }


async def user(request: web.Request) -> web.Response:
    """``GET /api/boards/{board}/{window}/users/{user_id|me}``."""
    user_id = _me_or_id(request)
    t = await _target(request)
    players, found = await _periods(request).lookup(t, [user_id])
    entry = found.get(str(user_id))
    if entry is None:
        await _standing_or_404(request, t, user_id, None)
    return json_response(
        {**_head(t), **_standing(str(user_id), entry, players), "players": players,
         "as_of": utcnow().isoformat()}
    )  # fmt: skip


async def users(request: web.Request) -> web.Response:
    """``GET /api/boards/{board}/{window}/users?ids=a,b,...`` (up to 100; only those on it)."""
    raw = request.query.get("ids")
    if not raw:
        raise BadQuery(f"ids must list 1 to {MAX_IDS} user ids, comma-separated")
    parts = raw.split(",")
    if len(parts) > MAX_IDS:
        raise BadQuery(f"ids must list 1 to {MAX_IDS} user ids, comma-separated")
    ids = list(dict.fromkeys(parse_user_id(p.strip(), "an id in ids") for p in parts))
    t = await _target(request)
    players, found = await _periods(request).lookup(t, ids)
    ranked = sorted(found.values(), key=lambda e: e.rank)
    return json_response(
        {
            **_head(t),
            "entries": [e.as_json() for e in ranked],
            "players": players,
            "as_of": utcnow().isoformat(),
        }
    )


__all__ = ["USER_HEADER", "around", "boards", "top", "user", "users"]
