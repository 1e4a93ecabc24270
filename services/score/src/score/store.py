"""The score store: applies a batch of commands to PostgreSQL in one transaction.

A batch costs six statements whatever its size: read the users' rows, look up which actions
are already applied (and the boards' revision), write the scores, add the batch's points to
every board period they count in (``board_scores``, common.boards), COPY the actions, COPY the
outbox rows. Arrays travel
through ``unnest`` and rows through ``COPY``, so the work per command is a few microseconds.

Exactly once, with optimistic concurrency: normally one replica owns a user's partition, but
during a rebalance the old and the new owner may apply the same records at once. A score row is
written only if its version is still the one read at the start; if another transaction changed
it (or created it, or inserted one of the actions: the ``actions`` primary key), this one rolls
back as a whole and its retry reads the new state, where those actions are duplicates. Waiting
on the row lock in the UPDATE makes the second writer see the first one's commit. The board
totals are increments written after that check, so they count exactly when the actions do: a
transaction that finds a user changed rolls back with its increments.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from common.boards import Catalog, load_catalog
from score.apply import (
    BoardKey,
    BoardTotal,
    Plan,
    UserState,
    board_change,
    changed_event,
    outbox_headers,
    plan_batch,
    plan_boards,
)
from score.commands import Command

# The relay LISTENs here; the apply transaction notifies it (delivered at commit).
NOTIFY_CHANNEL = "score_outbox"

# The batch's users as they are now. Unknown user ids are missing; users without a row yet
# (their first action) come with score 0, version 0 and has_row false. Nothing is locked: the
# write below only succeeds if no other transaction changed these rows in between.
_READ_USERS = """
SELECT u.user_id, u.username, coalesce(s.score, 0), coalesce(s.version, 0),
       s.user_id IS NOT NULL AS has_row
FROM users u LEFT JOIN scores s USING (user_id)
WHERE u.user_id = ANY($1::uuid[])
"""

# now() is the transaction's time: the moment every score of this batch was reached.
_ALREADY_APPLIED = """
SELECT now() AS now,
       ARRAY(SELECT action_id FROM actions WHERE action_id = ANY($1::uuid[])) AS applied,
       (SELECT coalesce(max(revision), 0) FROM boards) AS boards_revision
"""

# The batch's points per board period and player, added to what the rows hold (rows in key
# order, so overlapping writers lock them in one order). Returns every row's new total.
_ADD_BOARD_SCORES = """
INSERT INTO board_scores AS b
    (board_id, window_id, period, user_id, score, entries, version, reached_at)
SELECT board_id, window_id, period, user_id, points, entries, version, now()
FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[], $5::bigint[], $6::int[],
            $7::bigint[]) AS x(board_id, window_id, period, user_id, points, entries, version)
ON CONFLICT (board_id, window_id, period, user_id) DO UPDATE
SET score = b.score + EXCLUDED.score, entries = b.entries + EXCLUDED.entries,
    version = EXCLUDED.version, reached_at = EXCLUDED.reached_at
RETURNING board_id, window_id, period, user_id, score, entries
"""

# Optimistic concurrency: a row is updated only if its version is still the one we read, and a
# new row inserted only if nobody created it meanwhile (else a unique violation). The count
# tells whether every row was written.
_WRITE_SCORES = """
WITH updated AS (
    UPDATE scores AS s
    SET score = x.score, version = x.version, reached_at = now(), updated_at = now()
    FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[])
         AS x(user_id, score, version, read_version)
    WHERE s.user_id = x.user_id AND s.version = x.read_version
    RETURNING 1
), created AS (
    INSERT INTO scores (user_id, score, version, reached_at)
    SELECT user_id, score, version, now()
    FROM unnest($5::uuid[], $6::bigint[], $7::bigint[]) AS y(user_id, score, version)
    RETURNING 1
)
SELECT (SELECT count(*) FROM updated) + (SELECT count(*) FROM created) AS written,
       pg_notify('score_outbox', '') AS notified
"""

# Actions and outbox rows go in with COPY, the cheapest bulk insert PostgreSQL has.
# ``applied_at`` is left to its default, now(): the transaction's time.
_ACTION_COLUMNS = (
    "action_id", "user_id", "action_type", "points", "issued_at", "accepted_at", "version",
)  # fmt: skip
_OUTBOX_COLUMNS = ("event_key", "payload", "headers")


def _uuid_int(value: uuid.UUID) -> int:
    return value.int


class ConcurrentApplyError(Exception):
    """Another transaction changed this batch's users or actions after we read them: retry."""


class ScoreStore:
    """Applies batches of score commands; every change goes to the outbox in the same commit."""

    def __init__(self, pool: asyncpg.Pool, *, max_board_rows: int = 20_000) -> None:
        self._pool = pool
        # The boards as of the last batch: reloaded in the batch's transaction whenever the
        # table's revision moved, so every batch counts on the boards that existed when it ran.
        self._catalog: Catalog | None = None
        self._max_board_rows = max_board_rows

    async def apply(self, commands: Sequence[Command]) -> Plan:
        """Apply ``commands`` (in stream order) exactly once.

        One transaction, unless the commands count in more than ``max_board_rows`` board
        periods together: then consecutive runs of them that stay within it, one transaction
        each, in order. (A command counts in every window of every board it feeds; with
        hundreds of boards, one transaction of a full batch would outlast the database's
        statement timeout, and its retry too, for ever.) A failure after some runs committed
        leaves those applied: the retry finds them duplicates.

        Returns what was applied, what was a duplicate and which commands name unknown users
        (those change nothing). Raises on any database failure (the run in progress writes
        nothing); :class:`ConcurrentApplyError` when another replica changed the same users
        meanwhile.
        """
        if not commands:
            return Plan()
        runs = await self._runs(commands)
        if len(runs) == 1:
            return await self._apply_run(commands)
        plan = Plan()
        for run in runs:
            done = await self._apply_run(run)
            plan.applied += done.applied
            plan.duplicates += done.duplicates
            plan.unknown_users += done.unknown_users
            plan.final.update(done.final)
        return plan

    async def _runs(self, commands: Sequence[Command]) -> list[Sequence[Command]]:
        """``commands`` cut into runs of at most ``max_board_rows`` board periods each (by the
        boards as last read: an estimate, which is all a cut needs)."""
        catalog = self._catalog
        if catalog is None:
            async with self._pool.acquire() as conn:
                catalog = self._catalog = await load_catalog(conn)
        periods: dict[str, int] = {}
        runs: list[Sequence[Command]] = []
        start, rows = 0, 0
        for i, c in enumerate(commands):
            kind = c.data.action_type
            n = periods.get(kind)
            if n is None:
                n = periods[kind] = sum(len(b.counted_windows) for b in catalog.feeding(kind))
            if rows + n > self._max_board_rows and i > start:
                runs.append(commands[start:i])
                start, rows = i, 0
            rows += n
        runs.append(commands[start:])
        return runs

    async def _apply_run(self, commands: Sequence[Command]) -> Plan:
        """Apply ``commands`` in one transaction (see :meth:`apply`)."""
        user_ids = list({c.data.user_id: None for c in commands})
        async with self._pool.acquire() as conn, conn.transaction():
            users: dict[uuid.UUID, UserState] = {}
            existing: set[uuid.UUID] = set()
            for r in await conn.fetch(_READ_USERS, user_ids):
                users[r[0]] = UserState(r[1], r[2], r[3])
                if r[4]:
                    existing.add(r[0])
            row = await conn.fetchrow(_ALREADY_APPLIED, [c.data.action_id for c in commands])
            assert row is not None
            plan = plan_batch(commands, users, row["applied"])
            if plan.applied:
                catalog = self._catalog
                if catalog is None or catalog.revision != row["boards_revision"]:
                    catalog = self._catalog = await load_catalog(conn)
                await self._write(conn, plan, users, existing, row["now"], catalog)
        return plan

    async def _write(
        self,
        conn: PoolConnectionProxy,
        plan: Plan,
        before: dict[uuid.UUID, UserState],
        existing: set[uuid.UUID],
        now: datetime,
        catalog: Catalog,
    ) -> None:
        final = plan.final
        # In one global order (uuid order, as PostgreSQL compares them), so two overlapping
        # writers queue up on the row locks instead of deadlocking.
        ordered = sorted(final, key=_uuid_int)
        update = [u for u in ordered if u in existing]
        create = [u for u in ordered if u not in existing]
        # The score write goes out first, and PostgreSQL executes it while we encode the rows
        # below (asyncpg writes a cached statement to the socket before its first await).
        written = asyncio.ensure_future(
            conn.fetchval(
                _WRITE_SCORES,
                update,
                [final[u].score for u in update],
                [final[u].version for u in update],
                [before[u].version for u in update],
                create,
                [final[u].score for u in create],
                [final[u].version for u in create],
            )
        )
        try:
            await asyncio.sleep(0)
            boards = plan_boards(plan.applied, catalog)
            actions = [
                (d.action_id, d.user_id, d.action_type, d.points, d.issued_at,
                 d.accepted_at, a.version)
                for a in plan.applied
                for d in (a.command.data,)
            ]  # fmt: skip
        finally:
            try:
                count = await written
            except asyncpg.UniqueViolationError as exc:  # a first action, created meanwhile
                raise ConcurrentApplyError(str(exc)) from exc
        if count != len(final):
            raise ConcurrentApplyError(f"{len(final) - count} user(s) changed meanwhile")
        after = await self._add_board_scores(conn, boards.totals) if boards.totals else {}
        keys = {user_id: str(user_id) for user_id in final}
        outbox = []
        for a, counted in zip(plan.applied, boards.counted, strict=True):
            d = a.command.data
            key = keys[d.user_id]
            changes = []
            for board_key, points_so_far, entries_so_far in counted:
                batch = boards.totals[board_key]
                score, entries = after[board_key]
                changes.append(
                    board_change(
                        board_key,
                        score - (batch.points - points_so_far),
                        entries - (batch.entries - entries_so_far),
                    )
                )
            outbox.append(
                (
                    key.encode(),
                    changed_event(a, key, final[d.user_id].username, now, changes),
                    outbox_headers(a),
                )
            )
        try:
            await conn.copy_records_to_table("actions", columns=_ACTION_COLUMNS, records=actions)
        except asyncpg.UniqueViolationError as exc:
            raise ConcurrentApplyError(str(exc)) from exc
        # Row order is id order, which is the order the relay publishes in.
        await conn.copy_records_to_table("outbox", columns=_OUTBOX_COLUMNS, records=outbox)

    @staticmethod
    async def _add_board_scores(
        conn: PoolConnectionProxy, totals: dict[BoardKey, BoardTotal]
    ) -> dict[BoardKey, tuple[int, int]]:
        """Add the batch's totals to ``board_scores``; each row's (score, entries) after it."""
        ordered = sorted(totals, key=lambda k: (k[0], k[1], k[2], k[3].int))
        rows = await conn.fetch(
            _ADD_BOARD_SCORES,
            [k[0] for k in ordered],
            [k[1] for k in ordered],
            [k[2] for k in ordered],
            [k[3] for k in ordered],
            [totals[k].points for k in ordered],
            [totals[k].entries for k in ordered],
            [totals[k].version for k in ordered],
        )
        return {(r[0], r[1], r[2], r[3]): (int(r[4]), int(r[5])) for r in rows}
