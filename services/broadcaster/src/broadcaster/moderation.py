"""Banned players leave every board and window at once; unbanned ones come back as they were.

PostgreSQL is the truth: auth's ban, unban and delete-user append to ``moderation_events`` in
the account's transaction and notify ``board_moderation`` (common.moderation). Every replica
listens (and polls every ``removals_poll_s``) and applies the entries after its cursor in log
order:

- **The main board** (the default board's all-time window, ``P board:*``) changes in place, by
  one Lua script per entry: a ban takes the entry off, remembers the player's version in
  ``P board:hidden`` and tombstones them in ``P board:removed`` (so the apply script ignores
  their late events, as for a deletion); an unban puts their PostgreSQL row back. The board
  records the last entry it applied (``P board:moderation`` ``seq``), so whichever replica is
  first changes it and the others find nothing to do.
- **Every other board period Redis keeps** with an entry of the player is dropped and rebuilt
  from PostgreSQL on its next read or event; ``board_entries`` (migration 0009) leaves banned
  players out, so the rebuild shows them or not. Meanwhile the period reads PostgreSQL. This
  replica also stops applying the player's late events to periods
  (``BoardPeriods.hidden``). A replica that has not seen the ban yet may still apply one of
  them; its own look at the entry, moments later, drops the period again.
- Reads straight from PostgreSQL (the fallbacks, the archives) leave banned players out.

Why the version stays honest (never below what clients saw, after any rebuild): PostgreSQL's
board version counts every scored player's version, banned ones included, plus one per ban and
unban entry (broadcaster.postgres_scores). Redis steps by one per entry it applies (once, by
whichever replica is first), plus the versions the player gained meanwhile; a board without the
state (rebuilt after Redis lost it: the state is one of its keys, or built by the version
before this one) is synced from one PostgreSQL snapshot: the bans as of its last entry, and
that many steps. A rebuild syncs before it marks the board built, so a rebuilt board never
shows a banned player, even for a moment; a rebuild that merges into a live board (a new
replica's start) keeps the state it finds.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import asyncpg
import structlog

from broadcaster.board_periods import BoardPeriods
from broadcaster.redis_board import RedisBoard
from broadcaster.settings import Settings
from broadcaster.standings import member_for
from common.backoff import Backoff
from common.moderation import MODERATION_CHANNEL
from common.postgres import follow_channel
from common.redis_client import RedisClient

log = structlog.get_logger(__name__)

NOT_BUILT: Final = -1
NOT_SYNCED: Final = -2

# KEYS: rank, users, version, built, removed, hidden, state.
_PRELUDE = """
if redis.call('EXISTS', KEYS[4]) == 0 then return -1 end
if redis.call('EXISTS', KEYS[7]) == 0 then return -2 end
if tonumber(ARGV[1]) <= tonumber(redis.call('HGET', KEYS[7], 'seq') or '0') then return 0 end
"""

# Takes the entry off (if it is on) and tombstones the player. Returns one step, or what the
# prelude returns.
# A ban. ARGV: seq, user_id, the player's version in PostgreSQL.
_HIDE_ONE = """
local function hide(user_id, version)
  if redis.call('HEXISTS', KEYS[6], user_id) == 1 then return 0 end
  local old_version = 0
  local current = redis.call('HGET', KEYS[2], user_id)
  if current then
    local v, m = string.match(current, '^(%d+)|%d+|([^|]+)|')
    old_version = tonumber(v)
    redis.call('ZREM', KEYS[1], m)
    redis.call('HDEL', KEYS[2], user_id)
  end
  local recorded = math.max(version, old_version)
  redis.call('HSET', KEYS[6], user_id, string.format('%d', recorded))
  redis.call('SADD', KEYS[5], user_id)
  return recorded - old_version
end
"""

_BAN = (
    _PRELUDE
    + _HIDE_ONE
    + """
local step = hide(ARGV[2], tonumber(ARGV[3])) + 1
redis.call('INCRBY', KEYS[3], string.format('%d', step))
redis.call('HSET', KEYS[7], 'seq', ARGV[1])
return 1
"""
)

# An unban. ARGV: seq, user_id, then the player's row (version, score, member, username), the
# version 0 when they never scored.
_UNBAN = (
    _PRELUDE
    + """
local user_id, version = ARGV[2], tonumber(ARGV[3])
local step = 1
local hidden = redis.call('HGET', KEYS[6], user_id)
if hidden then
  redis.call('HDEL', KEYS[6], user_id)
  redis.call('SREM', KEYS[5], user_id)
  if version > 0 then
    redis.call('ZADD', KEYS[1], ARGV[4], ARGV[5])
    local value = ARGV[3] .. '|' .. ARGV[4] .. '|' .. ARGV[5] .. '|' .. ARGV[6]
    redis.call('HSET', KEYS[2], user_id, value)
  end
  step = math.max(version - tonumber(hidden), 0) + 1
end
redis.call('INCRBY', KEYS[3], string.format('%d', step))
redis.call('HSET', KEYS[7], 'seq', ARGV[1])
return 1
"""
)

# The moderation state from a PostgreSQL snapshot, on a board without it: a rebuild's (before
# its built marker; the state goes with the board's other keys, common.keyspace.BoardKeys), or a
# built board of the version before moderation (its first start). A board that has the state
# (a rebuild merging into a live board, a new replica starting) keeps it: the live entries keep
# it current. ARGV: "1" from a rebuild (the board need not be built), the snapshot's last seq,
# its ban and unban entries (steps), then per banned player: user_id, version. Returns 1 when
# synced now, 0 when it already was, -1 when not built (and not from a rebuild).
_SYNC = (
    """
if redis.call('EXISTS', KEYS[7]) == 1 then return 0 end
if ARGV[1] ~= '1' and redis.call('EXISTS', KEYS[4]) == 0 then return -1 end
"""
    + _HIDE_ONE
    + """
local step = tonumber(ARGV[3])
for i = 4, #ARGV, 2 do
  step = step + hide(ARGV[i], tonumber(ARGV[i + 1]))
end
redis.call('INCRBY', KEYS[3], string.format('%d', step))
redis.call('HSET', KEYS[7], 'seq', ARGV[2])
return 1
"""
)

# One consistent snapshot for a sync: the log's last entry, its ban and unban entries, the
# players banned as of it (with their versions).
_SNAPSHOT = """
SELECT coalesce(max(seq), 0) AS seq,
       count(*) FILTER (WHERE action <> 'deleted') AS steps
FROM moderation_events
"""
_BANNED = """
SELECT u.user_id, coalesce(s.version, 0) AS version
FROM users u LEFT JOIN scores s USING (user_id) WHERE u.banned
"""
_ENTRIES = """
SELECT seq, user_id, action FROM moderation_events WHERE seq > $1 ORDER BY seq LIMIT 500
"""
_ROW = """
SELECT u.username, s.score, s.version, s.reached_at
FROM users u LEFT JOIN scores s USING (user_id) WHERE u.user_id = $1
"""


@dataclass(frozen=True, slots=True)
class Entry:
    """One moderation log entry."""

    seq: int
    user_id: uuid.UUID
    action: str


class ModerationBoard:
    """The main board's moderation scripts."""

    def __init__(self, redis: RedisClient, board: RedisBoard) -> None:
        self.keys = k = board.keys
        self._redis = redis
        self._keys = [k.rank, k.users, k.version, k.built, k.removed, k.hidden, k.moderation]
        self._ban = redis.register_script(_BAN)
        self._unban = redis.register_script(_UNBAN)
        self._sync = redis.register_script(_SYNC)

    async def ban(self, seq: int, user_id: uuid.UUID, version: int) -> int:
        """1 applied, 0 applied before, or :data:`NOT_BUILT` / :data:`NOT_SYNCED`."""
        return int(await self._ban(keys=self._keys, args=[seq, str(user_id), version]))

    async def unban(
        self, seq: int, user_id: uuid.UUID, row: tuple[int, int, str, str] | None
    ) -> int:
        """As :meth:`ban`; ``row`` is (version, score, member, username), None if never scored."""
        version, score, member, username = row or (0, 0, "", "")
        args: list[str | int] = [seq, str(user_id), version, score, member, username]
        return int(await self._unban(keys=self._keys, args=args))

    async def sync(
        self, seq: int, steps: int, banned: Iterable[tuple[uuid.UUID, int]], *, rebuild: bool
    ) -> int:
        """Bring the board's moderation state in line with a PostgreSQL snapshot (a rebuild's
        board, or a built one without the state)."""
        args: list[str | int] = ["1" if rebuild else "0", seq, steps]
        for user_id, version in banned:
            args += [str(user_id), version]
        return int(await self._sync(keys=self._keys, args=args))

    async def applied_seq(self) -> int | None:
        """The last entry the board applied (None: not synced)."""
        raw = await self._redis.hget(self.keys.moderation, "seq")
        return None if raw is None else int(raw)


async def sync_board(
    board: ModerationBoard, pool: asyncpg.Pool, *, rebuild: bool
) -> list[uuid.UUID]:
    """Sync ``board``'s moderation state from one PostgreSQL snapshot; the banned players if it
    did (a rebuild calls it before marking the board built: broadcaster.rebuild)."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        snap = await conn.fetchrow(_SNAPSHOT)
        banned = [(r[0], int(r[1])) for r in await conn.fetch(_BANNED)]
    assert snap is not None
    if await board.sync(int(snap["seq"]), int(snap["steps"]), banned, rebuild=rebuild) != 1:
        return []
    log.info("board_moderation_synced", seq=snap["seq"], banned=len(banned), rebuild=rebuild)
    return [user_id for user_id, _ in banned]


class ModerationWatcher:
    """Applies the moderation log to the boards, in order."""

    def __init__(
        self,
        settings: Settings,
        board: ModerationBoard,
        pool: asyncpg.Pool,
        periods: BoardPeriods,
        on_change: Callable[[Iterable[uuid.UUID]], None] = lambda users: None,
        on_restored: Callable[[uuid.UUID], None] = lambda user: None,
    ) -> None:
        self._settings = settings
        self._on_restored = on_restored
        self._board = board
        self._pool = pool
        self._periods = periods
        self._on_change = on_change
        self._cursor: int | None = None  # None: start where the board is

    async def run(self) -> None:
        """Listen and apply until cancelled; failures are logged and retried with backoff."""
        await follow_channel(
            self._settings.postgres_dsn,
            MODERATION_CHANNEL,
            self.apply_new,
            poll_s=self._settings.removals_poll_s,
            backoff=Backoff(self._settings.retry_base_s, self._settings.retry_cap_s),
            failing="board_moderation_failing",
        )

    async def apply_new(self) -> int:
        """Apply the entries after the cursor; how many changed something here."""
        if self._cursor is None:
            # Who is banned now, for the periods' late events; then start where the main board
            # is (entries before it were applied, to it and to the periods, by whoever did).
            rows = await self._pool.fetch("SELECT user_id FROM users WHERE banned")
            self._periods.hidden.update(r[0] for r in rows)
            await self.sync()
            self._cursor = await self._board.applied_seq()
            if self._cursor is None:
                return 0  # not built yet: its rebuild syncs it
        changed = 0
        while entries := [
            Entry(r[0], r[1], r[2]) for r in await self._pool.fetch(_ENTRIES, self._cursor)
        ]:
            for e in entries:
                if not await self._apply(e):
                    return changed  # the main board is not built: its rebuild syncs it
                self._cursor = e.seq
                changed += 1
        return changed

    async def sync(self) -> bool:
        """Sync the main board's moderation state from PostgreSQL if it has none (a rebuild,
        a first start); True if it did."""
        if await self._board.applied_seq() is not None:
            return False
        banned = await sync_board(self._board, self._pool, rebuild=False)
        for user_id in banned:  # periods built before this version may show them
            await self._periods.forget_user(user_id)
        if banned:
            self._on_change(())
        return bool(banned)

    async def _apply(self, e: Entry) -> bool:
        """Apply one entry; False when the main board is not built (try again later)."""
        if e.action == "deleted":  # the main board: broadcaster.removals
            self._periods.hidden.add(e.user_id)
        else:
            result = await self._main(e)
            if result == NOT_SYNCED:
                await self.sync()
                result = await self._main(e)
            if result == NOT_BUILT:
                return False
            if e.action == "banned":
                self._periods.hidden.add(e.user_id)
            else:
                self._periods.hidden.discard(e.user_id)
                self._on_restored(e.user_id)
            if result == 1:
                log.info("board_moderation_applied", seq=e.seq, action=e.action)
                self._on_change((e.user_id,))
        await self._periods.forget_user(e.user_id, back=e.action == "unbanned")
        return True

    async def _main(self, e: Entry) -> int:
        row = await self._pool.fetchrow(_ROW, e.user_id)
        version = 0 if row is None or row["version"] is None else int(row["version"])
        if e.action == "banned":
            return await self._board.ban(e.seq, e.user_id, version)
        if row is None or not version:
            return await self._board.unban(e.seq, e.user_id, None)
        reached: datetime = row["reached_at"]
        member = member_for(e.user_id, reached)
        return await self._board.unban(
            e.seq, e.user_id, (version, int(row["score"]), member, row["username"])
        )
