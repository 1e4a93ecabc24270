"""Login sessions and their single-use, rotating refresh tokens.

A refresh token is 32 random bytes (base64url); only its SHA-256 is stored. Each refresh marks
the presented token used and issues the next one in the same session, under a row lock, so two
concurrent refreshes with one token cannot both succeed. Presenting a used token means it was
copied: the whole session is revoked, including the token the legitimate rotation produced.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
import uuid
from dataclasses import dataclass

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy
from redis.exceptions import RedisError

from auth.accounts import Account, AccountBanned
from auth.revocations import Revocations
from auth.security import SecurityRejection
from common.problems import ServiceUnavailable, Unauthorized

log = structlog.get_logger(__name__)

_TOKEN_BYTES = 32


class InvalidRefreshToken(SecurityRejection, Unauthorized):
    """401: unknown, expired, revoked or already used refresh token."""

    def __init__(self, reason: str, username: str | None = None) -> None:
        super().__init__("the refresh token is not valid; log in again")
        self.reason = reason
        self.username = username


class RevocationNotAnnounced(ServiceUnavailable):
    """503: the session ended, but the gateways could not be told yet; retrying is safe."""

    def __init__(self) -> None:
        super().__init__(
            "the session was ended but not yet announced; retry", headers={"Retry-After": "1"}
        )


def new_refresh_token() -> tuple[str, bytes]:
    """A fresh token and the hash that is stored for it."""
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    return token, token_hash(token)


def token_hash(token: str) -> bytes:
    """What ``refresh_tokens.token_hash`` holds for ``token``."""
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class Grant:
    """A session's current refresh token and whom it belongs to."""

    account: Account
    session_id: uuid.UUID
    refresh_token: str


class _Verdict(enum.Enum):
    ROTATED = "rotated"
    UNKNOWN = "unknown_refresh_token"
    REUSED = "refresh_token_reused"
    REVOKED = "session_revoked"
    EXPIRED = "refresh_token_expired"
    BANNED = "banned"


class Sessions:
    """Opens, rotates and revokes login sessions."""

    def __init__(self, pool: asyncpg.Pool, revocations: Revocations, refresh_ttl_s: int) -> None:
        self._pool = pool
        self._revocations = revocations
        self._ttl_s = float(refresh_ttl_s)

    async def open(self, account: Account) -> Grant:
        """Start a session for ``account`` with its first refresh token."""
        session_id = uuid.uuid4()
        token, digest = new_refresh_token()
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO login_sessions (session_id, user_id) VALUES ($1, $2)",
                session_id,
                account.user_id,
            )
            await self._insert_token(conn, digest, session_id)
        return Grant(account, session_id, token)

    async def rotate(self, refresh_token: str) -> Grant:
        """Spend ``refresh_token`` and return the session's next one.

        Raises :class:`InvalidRefreshToken` (a reused token revokes its session first) or
        :class:`AccountBanned`.
        """
        verdict, row, token = await self._rotate_in_db(token_hash(refresh_token))
        username = row["username"] if row is not None else None
        if verdict is _Verdict.ROTATED:
            assert row is not None
            assert token is not None
            return Grant(Account.from_row(row), row["session_id"], token)
        if verdict is _Verdict.REUSED:
            assert row is not None
            log.warning(
                "refresh_token_reuse_session_revoked",
                session_id=str(row["session_id"]),
                user_id=str(row["user_id"]),
            )
            await self._announce([row["session_id"]])
        if verdict is _Verdict.BANNED:
            raise AccountBanned(username or "")
        raise InvalidRefreshToken(verdict.value, username)

    async def _rotate_in_db(
        self, digest: bytes
    ) -> tuple[_Verdict, asyncpg.Record | None, str | None]:
        # Decide inside the transaction, raise outside it: a rejection that revokes the session
        # must commit that revocation.
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """SELECT t.session_id, t.used_at, t.expires_at <= now() AS expired,
                          s.revoked_at, u.user_id, u.username, u.roles, u.banned
                   FROM refresh_tokens t
                   JOIN login_sessions s ON s.session_id = t.session_id
                   JOIN users u ON u.user_id = s.user_id
                   WHERE t.token_hash = $1
                   FOR UPDATE OF t, s""",
                digest,
            )
            if row is None:
                return _Verdict.UNKNOWN, None, None
            if row["revoked_at"] is not None:
                return _Verdict.REVOKED, row, None
            if row["used_at"] is not None:
                await conn.execute(
                    "UPDATE login_sessions SET revoked_at = now() WHERE session_id = $1",
                    row["session_id"],
                )
                return _Verdict.REUSED, row, None
            if row["expired"]:
                return _Verdict.EXPIRED, row, None
            if row["banned"]:
                return _Verdict.BANNED, row, None
            await conn.execute(
                "UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1", digest
            )
            token, next_digest = new_refresh_token()
            await self._insert_token(conn, next_digest, row["session_id"])
            return _Verdict.ROTATED, row, token

    async def revoke(self, session_id: uuid.UUID) -> None:
        """End a session (idempotent) and tell the gateways, so its access tokens die now."""
        await self._pool.execute(
            """UPDATE login_sessions SET revoked_at = now()
               WHERE session_id = $1 AND revoked_at IS NULL""",
            session_id,
        )
        try:
            await self._revocations.sessions_revoked([session_id])
        except RedisError as exc:
            log.error("revocation_announce_failed", session_ids=[str(session_id)], error=repr(exc))
            raise RevocationNotAnnounced() from exc

    async def prune(self) -> int:
        """Delete expired refresh tokens and sessions left without any; returns rows deleted."""
        async with self._pool.acquire() as conn, conn.transaction():
            tokens = await conn.fetchval(
                """WITH gone AS (DELETE FROM refresh_tokens WHERE expires_at < now() RETURNING 1)
                   SELECT count(*) FROM gone"""
            )
            sessions = await conn.fetchval(
                """WITH gone AS (
                       DELETE FROM login_sessions s
                       WHERE NOT EXISTS (
                           SELECT 1 FROM refresh_tokens t WHERE t.session_id = s.session_id)
                         AND s.created_at < now() - interval '1 day'
                       RETURNING 1)
                   SELECT count(*) FROM gone"""
            )
        return int(tokens) + int(sessions)

    async def _insert_token(
        self, conn: PoolConnectionProxy[asyncpg.Record], digest: bytes, session_id: uuid.UUID
    ) -> None:
        await conn.execute(
            """INSERT INTO refresh_tokens (token_hash, session_id, expires_at)
               VALUES ($1, $2, now() + make_interval(secs => $3))""",
            digest,
            session_id,
            self._ttl_s,
        )

    async def _announce(self, session_ids: list[uuid.UUID]) -> None:
        try:
            await self._revocations.sessions_revoked(session_ids)
        except RedisError as exc:
            # The session is revoked in PostgreSQL (no more refreshes); only its current access
            # token lives on at the gateways, for at most access_ttl_s.
            log.error(
                "revocation_announce_failed",
                session_ids=[str(s) for s in session_ids],
                error=repr(exc),
            )
