"""Typed keys of what the broadcaster's aiohttp app holds (opened in app.py's cleanup contexts)."""

from __future__ import annotations

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from broadcaster.board import Board
from broadcaster.consumer import ChangeConsumer
from broadcaster.fanout import Fanout
from broadcaster.leaderboard import Leaderboard
from broadcaster.metrics import Metrics
from broadcaster.rebuild import Rebuilder
from broadcaster.removals import RemovalWatcher
from broadcaster.settings import Settings

settings_key = web.AppKey("settings", Settings)
metrics_key = web.AppKey("metrics", Metrics)
redis_key = web.AppKey("redis", aioredis.Redis)
pool_key = web.AppKey("pool", asyncpg.Pool)
board_key = web.AppKey("board", Board)
rebuilder_key = web.AppKey("rebuilder", Rebuilder)
leaderboard_key = web.AppKey("leaderboard", Leaderboard)
fanout_key = web.AppKey("fanout", Fanout)
consumer_key = web.AppKey("consumer", ChangeConsumer)
removals_key = web.AppKey("removals", RemovalWatcher)
