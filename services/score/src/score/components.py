"""The service's parts, built when the app starts (see app.py) and reached via one AppKey."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from aiohttp import web

from score.closer import PeriodCloser
from score.consumer import CommandConsumer
from score.flags import PlayerFlagger
from score.metrics import ScoreMetrics
from score.moderation import ModerationAnnouncer
from score.relay import OutboxRelay
from score.settings import Settings


@dataclass(frozen=True)
class Components:
    """Everything the background work and the readiness checks use."""

    settings: Settings
    metrics: ScoreMetrics
    pool: asyncpg.Pool
    consumer: CommandConsumer
    relay: OutboxRelay
    flagger: PlayerFlagger | None = None  # None when flags_enabled is off
    closer: PeriodCloser | None = None  # None when period_close_enabled is off
    moderation: ModerationAnnouncer | None = None


components_key = web.AppKey("score_components", Components)
