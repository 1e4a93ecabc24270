"""One period of a board's window in Redis: the cache of its ``board_scores`` rows.

Keys: :class:`common.keyspace.PeriodBoardKeys`, all under one Redis Cluster hash tag per
(board, window, period). The layout is the main board's (broadcaster.redis_board): a sorted set
``rank`` (points; member :func:`broadcaster.standings.member_for`, so ties rank who reached the
score first), a hash ``users`` (user id -> ``"<version>|<score>|<member>|<username>|<entries>"``),
``version`` (the sum of the entries' versions: it only grows, and a rebuild lands at least as
high), ``built`` (a rebuild finished; without it writes are refused and reads go to PostgreSQL)
and ``rebuild-lock``.

An entry's version is the player's version after the last action counted in the period (the
ScoreChanged ``version``), so the same rule as the main board holds: an entry only moves to a
newer version, and replays, duplicates and replicas racing each other converge.

A period's keys expire together ``redis_past_periods`` period lengths after it ends
(:meth:`common.boards.Period.redis_until`): Redis keeps the current period and a bounded number
of past ones; older ones are read from PostgreSQL, which keeps every period.

The read scripts also serve the default board's all-time window, whose keys are the main board's
(:meth:`PeriodBoardKeys.of_board`, values without the entries field: there entries = version).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from broadcaster.redis_board import _LUA_COMMON, _REFRESH_LOCK, _RELEASE_LOCK
from common.keyspace import PeriodBoardKeys
from common.redis_client import RedisClient

_NOT_BUILT: Final = -1
# Period applies in flight at once on a cluster (PeriodBoards.apply_all).
_CLUSTER_CONCURRENCY: Final = 32

# KEYS: rank, users, version, built. ARGV: require_built, expire at (Unix ms, 0: never), then
# per entry: user_id, version, score, member, username, entries. Returns the entries applied, or
# -1 when the period is not built (and that is required).
_APPLY = """
if ARGV[1] == '1' and redis.call('EXISTS', KEYS[4]) == 0 then
  return -1
end
local applied = 0
for i = 3, #ARGV, 6 do
  local user_id, version, score = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local member, username, entries = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  local new_version = tonumber(version)
  local old_version, old_member = 0, false
  local current = redis.call('HGET', KEYS[2], user_id)
  if current then
    local v, m = string.match(current, '^(%d+)|%d+|([^|]+)|')
    old_version, old_member = tonumber(v), m
  end
  if new_version > old_version then
    if old_member and old_member ~= member then
      redis.call('ZREM', KEYS[1], old_member)
    end
    redis.call('ZADD', KEYS[1], score, member)
    redis.call('HSET', KEYS[2], user_id,
      version .. '|' .. score .. '|' .. member .. '|' .. username .. '|' .. entries)
    redis.call('INCRBY', KEYS[3], string.format('%d', new_version - old_version))
    applied = applied + 1
  end
end
if ARGV[2] ~= '0' then
  for k = 1, 3 do
    redis.call('PEXPIREAT', KEYS[k], ARGV[2])
  end
end
return applied
"""

# The first rank (0-based) after a cursor (score ARGV[s], member ARGV[s+1]): everything with more
# points, then the equal-points band (members descending) up to the cursor's member. A binary
# search in the band, so a cursor in a band of a million equal scores costs ~20 lookups.
_AFTER = """
local function after(key, score, member)
  local lo = redis.call('ZCOUNT', key, '(' .. score, '+inf')
  local hi = lo + redis.call('ZCOUNT', key, score, score)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if redis.call('ZREVRANGE', key, mid, mid)[1] >= member then
      lo = mid + 1
    else
      hi = mid
    end
  end
  return lo
end
local function entries(out, start, stop)
  local members = redis.call('ZREVRANGE', KEYS[1], start, stop)
  if #members == 0 then
    return out
  end
  local users = {}
  for i, member in ipairs(members) do
    users[i] = user_of(member)
  end
  local values = redis.call('HMGET', KEYS[2], unpack(users))
  for i, user_id in ipairs(users) do
    out[#out + 1] = user_id
    out[#out + 1] = values[i] or ''
  end
  return out
end
"""

# KEYS: rank, users, version, built. ARGV: limit, has cursor ('1'/'0'), cursor score, member.
# Returns false when not built, else {version, players, first rank0, user id, value, ...}.
_PAGE = (
    _LUA_COMMON
    + _AFTER
    + """
if redis.call('EXISTS', KEYS[4]) == 0 then
  return false
end
local start = 0
if ARGV[2] == '1' then
  start = after(KEYS[1], ARGV[3], ARGV[4])
end
local out = {redis.call('GET', KEYS[3]) or '0', redis.call('ZCARD', KEYS[1]), start}
return entries(out, start, start + tonumber(ARGV[1]) - 1)
"""
)

# KEYS: rank, users, version, built. ARGV: user_id, n. Returns false when not built, else
# {version, players, player's rank0 (-1: not on the board), first rank0, user id, value, ...}.
_AROUND = (
    _LUA_COMMON
    + _AFTER
    + """
if redis.call('EXISTS', KEYS[4]) == 0 then
  return false
end
local out = {redis.call('GET', KEYS[3]) or '0', redis.call('ZCARD', KEYS[1])}
local value = redis.call('HGET', KEYS[2], ARGV[1])
local rank = value and redis.call('ZREVRANK', KEYS[1], string.match(value, '^%d+|%d+|([^|]+)|'))
if not rank then
  out[3], out[4] = -1, 0
  return out
end
local n = tonumber(ARGV[2])
local start = math.max(rank - n, 0)
out[3], out[4] = rank, start
return entries(out, start, rank + n)
"""
)

# KEYS: rank, users, version, built. ARGV: user ids. Returns false when not built, else
# {version, players, value, rank0, value, rank0, ...} ('' and -1 for a player not on the board).
_LOOKUP = """
if redis.call('EXISTS', KEYS[4]) == 0 then
  return false
end
local out = {redis.call('GET', KEYS[3]) or '0', redis.call('ZCARD', KEYS[1])}
for i = 1, #ARGV do
  local value = redis.call('HGET', KEYS[2], ARGV[i])
  local rank = value and redis.call('ZREVRANK', KEYS[1], string.match(value, '^%d+|%d+|([^|]+)|'))
  out[#out + 1] = value or ''
  out[#out + 1] = rank or -1
end
return out
"""


@dataclass(frozen=True, slots=True)
class PeriodEntry:
    """A player's entry in a board period, as a change or a PostgreSQL row brings it."""

    user_id: str
    username: str
    score: int
    entries: int
    version: int
    member: str  # broadcaster.standings.member_for(user, reached_at)


@dataclass(frozen=True, slots=True)
class Ranked:
    """A player's place in one board period (``rank`` 1-based)."""

    rank: int
    user_id: str
    username: str
    score: int
    entries: int
    member: str

    def as_json(self) -> dict[str, object]:
        """The entry as the board routes show it."""
        return {
            "rank": self.rank,
            "user_id": self.user_id,
            "username": self.username,
            "score": self.score,
            "entries": self.entries,
        }


@dataclass(frozen=True, slots=True)
class Slice:
    """Consecutive entries of a period, its player count and version; ``found`` is the player's
    rank for an around read (None: not on the board)."""

    version: int
    players: int
    entries: tuple[Ranked, ...]
    found: int | None = None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ranked(rank: int, user_id: str, value: str) -> Ranked | None:
    parts = value.split("|")
    if len(parts) < 4:  # the hash lost the user (partial flush): the rebuild repairs it
        return None
    entries = int(parts[4]) if len(parts) > 4 else int(parts[0])
    return Ranked(rank, user_id, parts[3], int(parts[1]), entries, parts[2])


def _slice(reply: list[Any], first_at: int, start: int) -> tuple[Ranked, ...]:
    # Pairs of (user id, value) from the entries function: the script names the user it looked
    # up, and the value holds the member, so no member is parsed here (a 1,000-entry page spent
    # half its Python turning members back into user ids).
    out: list[Ranked] = []
    for i in range(first_at, len(reply), 2):
        entry = _ranked(start + len(out) + 1, _text(reply[i]), _text(reply[i + 1]))
        if entry is not None:
            out.append(entry)
    return tuple(out)


def _apply_args(
    entries: Sequence[PeriodEntry], expire_at: datetime | None, *, require_built: bool = True
) -> list[str | int]:
    """The apply script's ARGV."""
    args: list[str | int] = ["1" if require_built else "0", _ms(expire_at)]
    for e in entries:
        args += [e.user_id, e.version, e.score, e.member, e.username, e.entries]
    return args


def _ms(instant: datetime | None) -> int:
    return 0 if instant is None else int(instant.timestamp() * 1000)


class PeriodBoards:
    """Board periods in Redis: apply entries, rebuild support, and the reads."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._apply = redis.register_script(_APPLY)
        self._page = redis.register_script(_PAGE)
        self._around = redis.register_script(_AROUND)
        self._lookup = redis.register_script(_LOOKUP)
        self._release_lock = redis.register_script(_RELEASE_LOCK)
        self._refresh_lock = redis.register_script(_REFRESH_LOCK)

    async def apply(
        self,
        keys: PeriodBoardKeys,
        entries: Sequence[PeriodEntry],
        expire_at: datetime | None,
        *,
        require_built: bool = True,
    ) -> int | None:
        """Apply entries (newer versions only); None, with nothing done, when not built."""
        args = _apply_args(entries, expire_at, require_built=require_built)
        applied = int(await self._apply(keys=keys.board, args=args))
        return None if applied == _NOT_BUILT else applied

    async def apply_all(
        self, batch: Sequence[tuple[PeriodBoardKeys, Sequence[PeriodEntry], datetime | None]]
    ) -> list[int | Exception | None]:
        """:meth:`apply` for several periods at once, answers in order: one pipelined round trip
        on a Redis server; on a cluster (whose client pipelines no scripts) concurrent calls,
        which its per-node connections carry side by side. A period whose script failed (a
        Redis that lost the script, or an error of its own) is applied once more on its own;
        what that raises is returned in its place (connection failures raise: they concern
        all)."""
        if len(batch) <= 1:
            return [await self.apply(*item) for item in batch]
        results: list[int | Exception | None] = []
        if isinstance(self._redis, RedisCluster):
            for start in range(0, len(batch), _CLUSTER_CONCURRENCY):
                chunk = batch[start : start + _CLUSTER_CONCURRENCY]
                results += await asyncio.gather(*(self._apply_alone(*item) for item in chunk))
            return results
        async with self._redis.pipeline(transaction=False) as pipe:
            for keys, entries, expire_at in batch:
                board = keys.board
                pipe.evalsha(self._apply.sha, len(board), *board, *_apply_args(entries, expire_at))
            replies = await pipe.execute(raise_on_error=False)
        for item, reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception):
                results.append(await self._apply_alone(*item))
            else:
                results.append(None if int(reply) == _NOT_BUILT else int(reply))
        return results

    async def _apply_alone(
        self, keys: PeriodBoardKeys, entries: Sequence[PeriodEntry], expire_at: datetime | None
    ) -> int | Exception | None:
        try:
            return await self.apply(keys, entries, expire_at)
        except (RedisConnectionError, RedisTimeoutError):
            raise
        except Exception as exc:
            return exc

    async def page(
        self, keys: PeriodBoardKeys, limit: int, after: tuple[int, str] | None
    ) -> Slice | None:
        """``limit`` entries after the cursor position ``after`` (score, member); None if not
        built."""
        args: list[str | int] = [limit, "0", 0, ""] if after is None else [limit, "1", *after]
        reply = await self._page(keys=keys.board, args=args)
        if reply is None:
            return None
        start = int(reply[2])
        return Slice(int(reply[0]), int(reply[1]), _slice(reply, 3, start))

    async def around(self, keys: PeriodBoardKeys, user_id: str, n: int) -> Slice | None:
        """The player and ``n`` entries above and below; None if not built."""
        reply = await self._around(keys=keys.board, args=[user_id, n])
        if reply is None:
            return None
        rank = int(reply[2])
        if rank < 0:
            return Slice(int(reply[0]), int(reply[1]), ())
        return Slice(int(reply[0]), int(reply[1]), _slice(reply, 4, int(reply[3])), rank + 1)

    async def lookup(
        self, keys: PeriodBoardKeys, user_ids: Sequence[str]
    ) -> tuple[int, int, dict[str, Ranked]] | None:
        """Version, player count and the entries of those of ``user_ids`` on the board."""
        reply = await self._lookup(keys=keys.board, args=list(user_ids))
        if reply is None:
            return None
        found = {}
        for user_id, i in zip(user_ids, range(2, len(reply), 2), strict=True):
            value, rank = _text(reply[i]), int(reply[i + 1])
            entry = _ranked(rank + 1, user_id, value) if rank >= 0 else None
            if entry is not None:
                found[user_id] = entry
        return int(reply[0]), int(reply[1]), found

    async def is_built(self, keys: PeriodBoardKeys) -> bool:
        """True when a rebuild completed since the period's keys were last lost."""
        return bool(await self._redis.exists(keys.built))

    async def mark_built(
        self, keys: PeriodBoardKeys, info: dict[str, Any], expire_at: datetime | None
    ) -> None:
        """Record that the period is complete in Redis (expiring with its other keys)."""
        text = json.dumps(info, default=str)
        if expire_at is None:
            await self._redis.set(keys.built, text)
        else:
            await self._redis.set(keys.built, text, pxat=_ms(expire_at))

    async def forget(self, keys: PeriodBoardKeys) -> None:
        """Drop the built marker: the period is no longer known complete (a failed apply)."""
        await self._redis.delete(keys.built)

    async def has_user(self, keys: PeriodBoardKeys, user_id: str) -> bool:
        """True when the period holds an entry of ``user_id``."""
        return bool(await self._redis.hexists(keys.users, user_id))

    async def drop(self, keys: PeriodBoardKeys) -> None:
        """Delete the period's keys (a banned player's entry must go): the next read or event
        rebuilds it from PostgreSQL. Its version starts again from PostgreSQL's entries (a
        period's version is not served to clients)."""
        await self._redis.delete(*keys.board)

    async def acquire_lock(self, keys: PeriodBoardKeys, token: str, ttl_s: float) -> bool:
        """Take the period's rebuild lock unless another replica holds it."""
        return bool(await self._redis.set(keys.lock, token, nx=True, px=int(ttl_s * 1000)))

    async def refresh_lock(self, keys: PeriodBoardKeys, token: str, ttl_s: float) -> bool:
        """Extend our rebuild lock; False when it expired and someone else may hold it."""
        args: list[str | int] = [token, int(ttl_s * 1000)]
        return bool(await self._refresh_lock(keys=[keys.lock], args=args))

    async def release_lock(self, keys: PeriodBoardKeys, token: str) -> None:
        """Release our lock (never someone else's)."""
        await self._release_lock(keys=[keys.lock], args=[token])
