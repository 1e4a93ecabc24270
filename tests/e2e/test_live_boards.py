"""Live board subscriptions through the gateway (which pipes the WebSocket byte for byte): a
signed-in player subscribes to the default board's daily window, completes an action, and sees
it in that period's top and in their own around frame."""

from __future__ import annotations

import json
import uuid
from typing import Any

import aiohttp

from tests.e2e.harness import System, complete_action, register_and_login


async def _next(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    while True:
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        frame: dict[str, Any] = json.loads(msg.data)
        if frame["type"] == kind:
            return frame


async def test_a_subscribed_player_sees_their_action_on_the_daily_board(
    system: System, http: aiohttp.ClientSession
) -> None:
    player = await register_and_login(http, system.gateway, f"p{uuid.uuid4().hex[:12]}")
    url = system.gateway.replace("http", "ws", 1) + "/ws/scoreboard"
    async with http.ws_connect(url, headers=player.auth) as ws:
        await ws.send_str(json.dumps({"type": "subscribe", "board": "nope", "window": "daily"}))
        assert (await _next(ws, "error"))["code"] == "unknown_board"
        await ws.send_str(
            json.dumps({"type": "subscribe", "board": "global", "window": "daily", "around": 2})
        )
        snap = await _next(ws, "top")
        assert (snap["board"], snap["window"]) == ("global", "daily")
        first = await _next(ws, "around")
        assert first["rank"] is None  # not on today's board yet
        status, body = await complete_action(http, system.gateway, player, "quest", wait_s=10)
        assert status == 200, body
        mine = await _next(ws, "around")
        assert mine["period"] == snap["period"]
        assert mine["rank"] is not None
        me = mine["entries"][mine["rank"] - mine["entries"][0]["rank"]]
        assert me["user_id"] == player.user_id
        assert me["score"] == 50
        assert me["entries"] == 1
