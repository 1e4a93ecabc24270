"""The live account checks: a revoked login session, a deleted or banned user.

Auth records them in Redis (:mod:`common.keyspace`); they are read on every request that needs a
principal (one MGET, never cached), so a logout or a ban takes effect at once.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from common.keyspace import USER_BANNED, USER_DELETED, revoked_session_key, user_status_key
from common.problems import Forbidden
from common.rejections import Rejection
from gateway.tokens import InvalidToken, Principal, TokenVerifier


class UserBanned(Forbidden, Rejection):
    """403: the account is banned."""

    reason = "user_banned"


def raise_for_account(*, revoked: bool, status: object) -> None:
    """Raise what a revoked session (401), deleted user (401) or banned user (403) gets."""
    if revoked:
        raise InvalidToken("this login session has been revoked", reason="session_revoked")
    if status == USER_DELETED.encode():
        raise InvalidToken("this account no longer exists", reason="user_deleted")
    if status == USER_BANNED.encode():
        raise UserBanned("this account is banned")


class Authenticator:
    """Token verification plus the live account checks in Redis."""

    def __init__(self, verifier: TokenVerifier, redis: aioredis.Redis, prefix: str) -> None:
        self.verifier = verifier
        self._redis = redis
        self._prefix = prefix

    def account_keys(self, principal: Principal) -> tuple[str, str]:
        """The Redis keys of the live account checks: revoked session, user status."""
        return (
            revoked_session_key(self._prefix, principal.session_id),
            user_status_key(self._prefix, principal.user_id),
        )

    async def check_account(self, principal: Principal) -> None:
        """401 if the session was revoked or the user deleted, 403 if banned (one MGET)."""
        revoked, status = await self._redis.mget(*self.account_keys(principal))
        raise_for_account(revoked=revoked is not None, status=status)

    async def authenticate(self, token: str, *, check_account: bool = True) -> Principal:
        """Verify ``token`` and, unless ``check_account=False``, the account's standing.

        ``check_account=False`` leaves the live account checks to the caller, which must make
        them (the update path does, in its single admission round trip).
        """
        principal = await self.verifier.verify(token)
        if check_account:
            await self.check_account(principal)
        return principal
