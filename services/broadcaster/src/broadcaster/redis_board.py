"""The board's Redis store: a cache of PostgreSQL's ``scores`` kept current by ScoreChanged events.

Keys (``P`` is ``settings.redis_prefix``; the names are :class:`common.keyspace.BoardKeys`, all
under the hash tag ``{bd:global:all-time:all}``, written ``T`` here, so they share one Redis
Cluster slot):

- ``P T:rank``: sorted set, score = points, member = :func:`broadcaster.standings.member_for`
  (so ``ZREVRANGE`` gives the board's order, ties included).
- ``P T:users``: hash, user id -> ``"<version>|<score>|<member>|<username>"``.
- ``P T:version``: the board version. Each applied change adds the user's version step
  (``INCRBY new - old``), so the board version is always the sum of the users' versions: it only
  grows, and after the keys are lost a rebuild from PostgreSQL lands on a version at least as high
  as before (PostgreSQL is never behind Redis), so clients never see it go back.
- ``P T:built``: marker written when a rebuild finished. Without it the board is incomplete
  (flushed, evicted, never built): writes are refused and reads go to PostgreSQL until rebuilt.
- ``P T:rebuild-lock``: held by the one replica that rebuilds.
- ``P T:removed``: set of deleted users' ids (tombstones). Removing a user takes their entry
  off and adds their last version plus one to the board version, as PostgreSQL's
  ``removed_users`` records it (see :mod:`common.removals`); a late event for them is ignored.

Every change is applied by one Lua script, atomically and idempotently: a user's entry moves only
to a newer version, so duplicates and reordered events are no-ops. The script touches the
board's slot only and returns a :class:`common.events.AppliedNotice`
(``{"action_id","user_id","username","score","version","rank"}``) per applied change. After it,
separate commands (:meth:`RedisBoard._confirm`) mark each action's done marker
:data:`common.keyspace.DONE_APPLIED`, delete its ticket (their own slot, on the Redis the
gateway shares: the board may be on a Redis Cluster of its own) and publish the notices on
channel ``P applied`` (:func:`common.keyspace.applied_channel`; the gateway's ``Prefer: wait``
listens there).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio.cluster import RedisCluster

from broadcaster.standings import Entry, Removal, ScoreRow, Standing, TopSnapshot, member_for
from common.events import ScoreChanged
from common.keyspace import APPLIED_TTL_S, DONE_APPLIED, BoardKeys, done_key, ticket_key
from common.redis_client import RedisClient

_NOT_BUILT: Final = -1

# Lua helpers shared by the scripts. A user's value is "<version>|<score>|<member>|<username>";
# usernames cannot contain "|" (the contract allows A-Z a-z 0-9 _ . -).
_LUA_COMMON = """
local INVERT = {['0']='f',['1']='e',['2']='d',['3']='c',['4']='b',['5']='a',['6']='9',['7']='8',
  ['8']='7',['9']='6',a='5',b='4',c='3',d='2',e='1',f='0'}
local function user_of(member)
  local h = string.gsub(string.sub(member, 18), '%x', INVERT)
  return string.sub(h, 1, 8) .. '-' .. string.sub(h, 9, 12) .. '-' .. string.sub(h, 13, 16)
    .. '-' .. string.sub(h, 17, 20) .. '-' .. string.sub(h, 21, 32)
end
"""

# KEYS: rank, users, version, built, removed, held (the board's slot only).
# ARGV: require_built ("1"/"0"), notices ("1"/"0"), then per change: user_id, version, score,
#       member, username, action_id, held score ('' = as the held hash says: shadow
#       quarantine, broadcaster.holds).
# Returns {applied count, board version, then per applied change its AppliedNotice JSON when
# notices are asked for}, or {-1, 0} when the board is not built.
# The actions' done markers and tickets, and the applied channel, are elsewhere (another slot,
# maybe another Redis): RedisBoard.apply_changes marks the actions and publishes the notices
# after this script, in commands of their own.
_APPLY = """
if ARGV[1] == '1' and redis.call('EXISTS', KEYS[4]) == 0 then
  return {-1, 0}
end
local notify = ARGV[2] == '1'
local applied, notices = 0, {}
for i = 3, #ARGV, 7 do
  local user_id, version, score = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local member, username, action_id = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  local held = ARGV[i + 6]
  local new_version = tonumber(version)
  local old_version, old_member = 0, false
  local current = redis.call('HGET', KEYS[2], user_id)
  if current then
    local v, m = string.match(current, '^(%d+)|%d+|([^|]+)|')
    old_version, old_member = tonumber(v), m
  end
  if new_version > old_version and redis.call('SISMEMBER', KEYS[5], user_id) == 0 then
    -- Shadow quarantine: the public entry shows at most the held score, the real one is kept
    -- in the held hash (the player's own standing reads it).
    local shown = score
    if held == '' then
      held = string.match(redis.call('HGET', KEYS[6], user_id) or '', '^(%d+)|') or ''
    end
    if held ~= '' then
      if tonumber(held) < tonumber(score) then
        shown = held
      end
      redis.call('HSET', KEYS[6], user_id, held .. '|' .. score)
    end
    if old_member and old_member ~= member then
      redis.call('ZREM', KEYS[1], old_member)
    end
    redis.call('ZADD', KEYS[1], shown, member)
    local value = version .. '|' .. shown .. '|' .. member .. '|' .. username
    redis.call('HSET', KEYS[2], user_id, value)
    redis.call('INCRBY', KEYS[3], string.format('%d', new_version - old_version))
    applied = applied + 1
    if notify then
      -- The notice goes to the player's own request: their real score, ranked as if shown.
      local rank = redis.call('ZCOUNT', KEYS[1], '(' .. score, '+inf') + 1
      if shown == score then
        rank = redis.call('ZREVRANK', KEYS[1], member) + 1
      end
      notices[#notices + 1] = '{"action_id":"' .. action_id .. '","user_id":"' .. user_id
        .. '","username":"' .. username .. '","score":' .. score .. ',"version":' .. version
        .. ',"rank":' .. string.format('%d', rank) .. '}'
    end
  end
end
local out = {applied, tonumber(redis.call('GET', KEYS[3]) or '0')}
for _, notice in ipairs(notices) do
  out[#out + 1] = notice
end
return out
"""

# KEYS: rank, users, version, built, removed. ARGV: require_built ("1"/"0"), then per user:
#       user_id, the version PostgreSQL recorded at the removal.
# Returns the number of users newly removed, or -1 when the board is not built (and required).
_REMOVE = """
if ARGV[1] == '1' and redis.call('EXISTS', KEYS[4]) == 0 then
  return -1
end
local removed = 0
for i = 2, #ARGV, 2 do
  local user_id, version = ARGV[i], tonumber(ARGV[i + 1])
  if redis.call('SADD', KEYS[5], user_id) == 1 then
    local old_version = 0
    local current = redis.call('HGET', KEYS[2], user_id)
    if current then
      local v, m = string.match(current, '^(%d+)|%d+|([^|]+)|')
      old_version = tonumber(v)
      redis.call('ZREM', KEYS[1], m)
      redis.call('HDEL', KEYS[2], user_id)
    end
    local step = math.max(version, old_version) - old_version + 1
    redis.call('INCRBY', KEYS[3], string.format('%d', step))
    removed = removed + 1
  end
end
return removed
"""

# KEYS: rank, users, version, built. ARGV: n.
# Returns nil when not built, else {version, user_id, value, user_id, value, ...} in rank order.
_TOP = (
    _LUA_COMMON
    + """
if redis.call('EXISTS', KEYS[4]) == 0 then
  return false
end
local out = {redis.call('GET', KEYS[3]) or '0'}
for _, member in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)) do
  local user_id = user_of(member)
  out[#out + 1] = user_id
  out[#out + 1] = redis.call('HGET', KEYS[2], user_id) or ''
end
return out
"""
)

# KEYS: rank, users, version, built, held. ARGV: own ("1": the players' own standings, which
#       show a held player's real score, ranked as if it were on the board), then user ids.
# Returns nil when not built, else {version, value, rank0, value, rank0, ...} ('' / -1 unknown).
_STANDINGS = """
if redis.call('EXISTS', KEYS[4]) == 0 then
  return false
end
local out = {redis.call('GET', KEYS[3]) or '0'}
for i = 2, #ARGV do
  local value = redis.call('HGET', KEYS[2], ARGV[i])
  local real = ARGV[1] == '1' and value
    and string.match(redis.call('HGET', KEYS[5], ARGV[i]) or '', '|(%d+)$')
  if real then
    out[#out + 1] = string.gsub(value, '^(%d+)|%d+|', '%1|' .. real .. '|', 1)
    out[#out + 1] = redis.call('ZCOUNT', KEYS[1], '(' .. real, '+inf')
  elseif value then
    out[#out + 1] = value
    out[#out + 1] = redis.call('ZREVRANK', KEYS[1], string.match(value, '^%d+|%d+|([^|]+)|')) or -1
  else
    out[#out + 1] = ''
    out[#out + 1] = -1
  end
end
return out
"""

# KEYS: rank, users, version, built, held, hold-steps. ARGV: user_id, held score ('' releases).
# Holds (or releases) a player's public entry: shown = min(real, held). Returns 1 when the entry
# moved (the board version and the step count grow by one), 0 when nothing changed on the board,
# -1 when the board is not built (the rebuild reads the holds itself). Idempotent, and it also
# corrects an entry something else wrote unheld (an unban putting the player back).
_HOLD = """
if redis.call('EXISTS', KEYS[4]) == 0 then
  return -1
end
local user_id, held = ARGV[1], ARGV[2]
local entry = redis.call('HGET', KEYS[5], user_id)
if held == '' and not entry then
  return 0
end
local current = redis.call('HGET', KEYS[2], user_id)
if not current then
  -- Not on the board (never scored, or taken off): the next change they make finds the hold.
  if held == '' then
    redis.call('HDEL', KEYS[5], user_id)
  else
    redis.call('HSET', KEYS[5], user_id, held .. '|0')
  end
  return 0
end
local version, shown, member, username = string.match(current, '^(%d+)|(%d+)|([^|]+)|(.*)$')
-- The entry shows at most the real score; one written unheld shows the real score itself.
local real = shown
local kept = entry and string.match(entry, '|(%d+)$')
if kept and tonumber(kept) > tonumber(shown) then
  real = kept
end
local now_shown = real
if held == '' then
  redis.call('HDEL', KEYS[5], user_id)
else
  if tonumber(held) < tonumber(real) then
    now_shown = held
  end
  redis.call('HSET', KEYS[5], user_id, held .. '|' .. real)
end
if now_shown == shown then
  return 0
end
redis.call('ZADD', KEYS[1], now_shown, member)
local value = version .. '|' .. now_shown .. '|' .. member .. '|' .. username
redis.call('HSET', KEYS[2], user_id, value)
redis.call('INCRBY', KEYS[3], 1)
redis.call('INCRBY', KEYS[6], 1)
return 1
"""

# KEYS: version, hold-steps. ARGV: the steps PostgreSQL counts (board_hold_steps). Brings the
# board version up to count them (a rebuild: the holds of its snapshot were merged without steps).
_SYNC_STEPS = """
local have = tonumber(redis.call('GET', KEYS[2]) or '0')
local want = tonumber(ARGV[1])
if want > have then
  redis.call('INCRBY', KEYS[1], string.format('%d', want - have))
  redis.call('SET', KEYS[2], ARGV[1])
end
return 0
"""

# No KEYS (a channel is no key: on a cluster any node takes it, and PUBLISH reaches them all).
# ARGV: the applied channel, then the notices to publish on it, in order.
_PUBLISH = """
for i = 2, #ARGV do
  redis.call('PUBLISH', ARGV[1], ARGV[i])
end
return #ARGV - 1
"""

# On a Redis server (not a cluster, whose slots keep each action's keys apart): what
# RedisBoard._confirm does, in one call. KEYS: per action its done marker and ticket.
# ARGV: the marker's value, the TTL of a new marker (s), the applied channel, then the notices.
_CONFIRM = """
local value, ttl, channel = ARGV[1], ARGV[2], ARGV[3]
for i = 1, #KEYS, 2 do
  if not redis.call('SET', KEYS[i], value, 'XX', 'KEEPTTL') then
    redis.call('SET', KEYS[i], value, 'NX', 'EX', ttl)
  end
  redis.call('DEL', KEYS[i + 1])
end
for i = 4, #ARGV do
  redis.call('PUBLISH', channel, ARGV[i])
end
return #KEYS / 2
"""

_REFRESH_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one apply call did."""

    applied: int
    stale: int
    version: int


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _parse_value(value: str) -> tuple[int, int, str]:
    """(version, score, username) of a users-hash value."""
    version, score, _member, username = value.split("|", 3)
    return int(version), int(score), username


class RedisBoard:
    """The board in Redis: apply changes, read the top and players' standings, rebuild support."""

    def __init__(
        self, redis: RedisClient, prefix: str, *, actions: RedisClient | None = None
    ) -> None:
        """``redis`` holds the board; ``actions`` (default: ``redis``) the actions' done markers
        and tickets and the applied channel, which the gateway shares."""
        self.keys = BoardKeys.for_prefix(prefix)
        self.prefix = prefix  # the deployment's key prefix (settings.redis_prefix)
        self._redis = redis
        self._actions = redis if actions is None else actions
        self._apply = redis.register_script(_APPLY)
        self._remove = redis.register_script(_REMOVE)
        self._top = redis.register_script(_TOP)
        self._standings = redis.register_script(_STANDINGS)
        self._hold = redis.register_script(_HOLD)
        self._sync_steps = redis.register_script(_SYNC_STEPS)
        self._refresh_lock = redis.register_script(_REFRESH_LOCK)
        self._release_lock = redis.register_script(_RELEASE_LOCK)
        self._publish = self._actions.register_script(_PUBLISH)
        self._confirm_all = self._actions.register_script(_CONFIRM)
        self._actions_clustered = isinstance(self._actions, RedisCluster)

    async def apply_changes(
        self, changes: Sequence[ScoreChanged], on_board: Callable[[], None] = lambda: None
    ) -> ApplyResult | None:
        """Apply ScoreChanged events in order; None (nothing done) when the board is not built.

        Once the board has them, ``on_board`` is called (the fan-out may show them: the
        watchers need not wait for what follows), then each change confirms its action to the
        gateway and each applied one is announced (see :meth:`_confirm`).
        """
        args: list[str | int] = ["1", "1"]
        for c in changes:
            member = member_for(c.user_id, c.occurred_at)
            args += [str(c.user_id), c.version, c.score, member, c.username, str(c.action_id), ""]
        reply = await self._run_apply(args)
        if reply is None:
            return None
        result, notices = self._result(reply, len(changes))
        on_board()
        await self._confirm([c.action_id for c in changes], notices)
        return result

    async def _confirm(self, action_ids: Sequence[uuid.UUID], notices: Sequence[bytes]) -> None:
        """Mark each action :data:`common.keyspace.DONE_APPLIED`, delete its ticket, then
        publish the :class:`common.events.AppliedNotice` of each change the board applied.

        A ScoreChanged means its action is applied in PostgreSQL, so every replay is a 409: the
        marker keeps the gateway's TTL, or gets :data:`APPLIED_TTL_S` when there was none (a
        claim released after a publish that timed out yet reached Kafka). An action's two keys
        share a slot but not the board's (and may be on another Redis), hence commands of their
        own after the board script, pipelined (one round trip per node), then the notices in
        one more (a cluster pipeline cannot PUBLISH). Each marking is idempotent, so a batch
        applied again after a failure here finishes the job (the board part is then a no-op,
        and announces nothing: a ``Prefer: wait`` request then answers 202 at its timeout, as
        for any notice it misses). The notices go last, so a client told its action is applied
        finds the marker applied. On a Redis server all of it is one script call instead (three
        commands an action, packed one by one, were an eighth of the broadcaster's CPU under
        load).
        """
        if not action_ids:
            return
        if not self._actions_clustered:
            keys = []
            for action_id in action_ids:
                keys += [done_key(self.prefix, action_id), ticket_key(self.prefix, action_id)]
            args: list[str | int | bytes] = [DONE_APPLIED, APPLIED_TTL_S, self.keys.applied]
            args += notices
            await self._confirm_all(keys=keys, args=args)
            return
        async with self._actions.pipeline(transaction=False) as pipe:
            for action_id in action_ids:
                done = done_key(self.prefix, action_id)
                pipe.set(done, DONE_APPLIED, xx=True, keepttl=True)  # the gateway's marker
                pipe.set(done, DONE_APPLIED, nx=True, ex=APPLIED_TTL_S)  # none: a new one
                pipe.delete(ticket_key(self.prefix, action_id))
            await pipe.execute()
        if notices:
            await self._publish(keys=[], args=[self.keys.applied, *notices])

    async def merge_rows(self, rows: Sequence[ScoreRow]) -> ApplyResult:
        """Apply rows read from PostgreSQL (a rebuild): same version rule, nothing announced."""
        args: list[str | int] = ["0", "0"]
        for r in rows:
            member = member_for(r.user_id, r.reached_at)
            held = "" if r.held is None else r.held
            args += [str(r.user_id), r.version, r.score, member, r.username, "", held]
        reply = await self._run_apply(args)
        assert reply is not None  # merges do not require the marker
        return self._result(reply, len(rows))[0]

    async def _run_apply(self, args: list[str | int]) -> list[Any] | None:
        k = self.keys
        reply: list[Any] = await self._apply(
            keys=[k.rank, k.users, k.version, k.built, k.removed, k.held], args=args
        )
        return None if int(reply[0]) == _NOT_BUILT else reply

    @staticmethod
    def _result(reply: list[Any], count: int) -> tuple[ApplyResult, list[bytes]]:
        applied, version, *notices = reply
        result = ApplyResult(applied=int(applied), stale=count - int(applied), version=int(version))
        return result, notices

    async def remove_users(
        self, removals: Sequence[Removal], *, require_built: bool = True
    ) -> int | None:
        """Take deleted users off the board (idempotent); how many were newly removed.

        None (nothing done) when ``require_built`` and the board is not built: the rebuild
        applies every recorded removal itself.
        """
        if not removals:
            return 0
        k = self.keys
        args: list[str | int] = ["1" if require_built else "0"]
        for r in removals:
            args += [str(r.user_id), r.version]
        removed = int(
            await self._remove(keys=[k.rank, k.users, k.version, k.built, k.removed], args=args)
        )
        return None if removed == _NOT_BUILT else removed

    async def poll(self) -> int | None:
        """The board version, or None when the board is not built (one cheap round trip)."""
        version, built = await self._redis.mget([self.keys.version, self.keys.built])
        if built is None:
            return None
        return int(version or 0)

    async def top(self, n: int) -> TopSnapshot | None:
        """The first ``n`` entries and the board version, read atomically; None if not built."""
        k = self.keys
        reply = await self._top(keys=[k.rank, k.users, k.version, k.built], args=[n])
        if reply is None:
            return None
        entries: list[Entry] = []
        for i in range(1, len(reply), 2):
            value = _text(reply[i + 1])
            if not value:  # the hash lost the user (partial flush): the rebuild repairs it
                continue
            _version, score, username = _parse_value(value)
            entries.append(Entry(len(entries) + 1, _text(reply[i]), username, score))
        return TopSnapshot(version=int(reply[0]), entries=tuple(entries))

    async def standings(
        self, user_ids: Sequence[str], *, own: bool = False
    ) -> tuple[int, dict[str, Standing]] | None:
        """The board version and the standings of those ``user_ids`` on the board; ``own``: as
        the players see themselves (a held player's real score, ranked as if it were shown).

        None when the board is not built.
        """
        k = self.keys
        reply = await self._standings(
            keys=[k.rank, k.users, k.version, k.built, k.held],
            args=["1" if own else "0", *user_ids],
        )
        if reply is None:
            return None
        found: dict[str, Standing] = {}
        for user_id, i in zip(user_ids, range(1, len(reply), 2), strict=True):
            value, rank = _text(reply[i]), int(reply[i + 1])
            if value and rank >= 0:
                _version, score, username = _parse_value(value)
                found[user_id] = Standing(user_id, username, score, rank + 1)
        return int(reply[0]), found

    async def hold(self, user_id: uuid.UUID, held: int | None) -> int:
        """Hold the player's public entry at ``held`` points at most (None: release it); 1 when
        the board moved, 0 when it did not, -1 when it is not built."""
        k = self.keys
        return int(
            await self._hold(
                keys=[k.rank, k.users, k.version, k.built, k.held, k.hold_steps],
                args=[str(user_id), "" if held is None else held],
            )
        )

    async def holds(self) -> dict[uuid.UUID, int]:
        """The players held on the board and their held scores."""
        raw = await self._redis.hgetall(self.keys.held)
        return {uuid.UUID(_text(u)): int(_text(v).split("|", 1)[0]) for u, v in raw.items()}

    async def sync_hold_steps(self, steps: int) -> None:
        """Count ``steps`` holds and releases in the board version (after a rebuild)."""
        await self._sync_steps(keys=[self.keys.version, self.keys.hold_steps], args=[steps])

    async def is_built(self) -> bool:
        """True when a rebuild completed since the board keys were last lost."""
        return bool(await self._redis.exists(self.keys.built))

    async def mark_built(self, info: dict[str, Any]) -> None:
        """Record that the board is complete (``info`` says who built it, when, how many users)."""
        await self._redis.set(self.keys.built, json.dumps(info, default=str))

    async def acquire_lock(self, token: str, ttl_s: float) -> bool:
        """Take the rebuild lock unless another replica holds it."""
        return bool(await self._redis.set(self.keys.lock, token, nx=True, px=int(ttl_s * 1000)))

    async def refresh_lock(self, token: str, ttl_s: float) -> bool:
        """Extend our lock; False when it expired and someone else may hold it."""
        ttl_ms = int(ttl_s * 1000)
        return bool(await self._refresh_lock(keys=[self.keys.lock], args=[token, ttl_ms]))

    async def release_lock(self, token: str) -> None:
        """Release our lock (never someone else's)."""
        await self._release_lock(keys=[self.keys.lock], args=[token])

    async def lock_held(self) -> bool:
        """True while some replica holds the rebuild lock."""
        return bool(await self._redis.exists(self.keys.lock))
