"""The service's parts, built once per app (see app.py) and reached through one AppKey."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from broadcaster.board_periods import BoardPeriods
from broadcaster.board_reader import BoardReader
from broadcaster.consumer import ChangeConsumer
from broadcaster.fanout import Fanout
from broadcaster.holds import HoldWatcher
from broadcaster.metrics import BroadcasterMetrics
from broadcaster.moderation import ModerationWatcher
from broadcaster.postgres_scores import PostgresScores
from broadcaster.rebuild import Rebuilder
from broadcaster.redis_board import RedisBoard
from broadcaster.removals import RemovalWatcher
from broadcaster.settings import Settings


@dataclass(frozen=True)
class Components:
    """Everything the handlers, the WebSocket edge and the background tasks use."""

    settings: Settings
    metrics: BroadcasterMetrics
    board: RedisBoard
    scores: PostgresScores
    rebuilder: Rebuilder
    reader: BoardReader
    fanout: Fanout
    consumer: ChangeConsumer
    removals: RemovalWatcher
    holds: HoldWatcher
    periods: BoardPeriods
    moderation: ModerationWatcher


components_key = web.AppKey("broadcaster_components", Components)
