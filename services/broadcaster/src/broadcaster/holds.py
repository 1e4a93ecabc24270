"""Shadow quarantine on the live board: flagged players' new points wait for review.

PostgreSQL is the truth: a flag raised with the score service's ``flags_quarantine`` on records
the player's score at that moment (``player_flags.held_score``), and the view ``board_holds``
(migration 0007) gives, per player with an open or confirmed such flag, the most the public
board shows of them. The ``scores`` row keeps the real score. Every replica polls the view every
``holds_poll_s`` and brings the Redis board in line: a new hold lowers the public entry to
min(real, held), a released one (the flag cleared) shows the real score again; each change that
moves an entry adds one to the board version, so watchers get a frame.

Between polls the apply script does the rest (:mod:`broadcaster.redis_board`): a change for a
held player shows min(score, held) and keeps the real score in ``P board:held``, which the
player's own standing (``me`` frames, ``/api/scoreboard/me``) reads. A rebuild merges the holds
of its snapshot with the rows, so a rebuilt board shows the same.

Why the version stays honest: PostgreSQL counts a step for every flag raised with a hold and
every such flag cleared (``board_hold_steps``, never decreasing); Redis steps only for a change
it saw there, at most one per PostgreSQL step, and a rebuild brings its count up to
PostgreSQL's. So a rebuilt board's version is never below the live one. (One exception: a held
entry put back unheld by something else, an unban, is held again with a step of its own, so
Redis may count one more than PostgreSQL: the versions still only grow.)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable

import structlog

from broadcaster.postgres_scores import PostgresScores
from broadcaster.redis_board import RedisBoard
from broadcaster.settings import Settings
from common.backoff import Backoff

log = structlog.get_logger(__name__)


class HoldWatcher:
    """Applies the holds PostgreSQL records to the Redis board."""

    def __init__(
        self,
        settings: Settings,
        board: RedisBoard,
        scores: PostgresScores,
        on_change: Callable[[Iterable[uuid.UUID]], None] = lambda users: None,
    ) -> None:
        self._settings = settings
        self._board = board
        self._scores = scores
        self._on_change = on_change

    async def run(self) -> None:
        """Poll and apply until cancelled; failures are logged and retried with backoff."""
        backoff = Backoff(self._settings.retry_base_s, self._settings.retry_cap_s)
        while True:
            try:
                await self.apply()
                backoff.reset()
                await asyncio.sleep(self._settings.holds_poll_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("board_holds_failing", error=repr(exc), attempt=backoff.attempt + 1)
                await backoff.sleep()

    async def apply(self) -> list[uuid.UUID]:
        """Hold and release what changed in PostgreSQL since the last look; the players whose
        public entry moved."""
        wanted = await self._scores.holds()
        held = await self._board.holds()
        # Every hold, not just the new ones (a few players: one cheap call each): an entry
        # written around the apply script (an unban putting the player back) is held again.
        changes: dict[uuid.UUID, int | None] = dict(wanted)
        changes.update((user_id, None) for user_id in held.keys() - wanted.keys())
        moved: list[uuid.UUID] = []
        for user_id, score in changes.items():
            result = await self._board.hold(user_id, score)
            if result < 0:  # not built: the rebuild reads the holds itself
                return moved
            if result:
                moved.append(user_id)
            if result or held.get(user_id) != score:
                log.info(
                    "board_hold" if score is not None else "board_hold_released",
                    user_id=str(user_id),
                    held_score=score,
                    moved=bool(result),
                )
        if moved:
            self._on_change(moved)
        return moved
