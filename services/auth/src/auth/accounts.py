"""Accounts: registration and password login."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import asyncpg
import structlog

from auth.login_throttle import LoginThrottle
from auth.passwords import Passwords
from auth.security import SecurityRejection
from auth.signup_throttle import SignupThrottle
from common.problems import Conflict, Forbidden, Unauthorized

log = structlog.get_logger(__name__)


class UsernameTaken(SecurityRejection, Conflict):
    """409: the name (in any letter case) belongs to someone else."""

    reason = "username_taken"

    def __init__(self, username: str) -> None:
        super().__init__("this username is taken")
        self.username = username


class InvalidCredentials(SecurityRejection, Unauthorized):
    """401: unknown user or wrong password (clients cannot tell which)."""

    def __init__(self, reason: str, username: str) -> None:
        super().__init__("wrong username or password")
        self.reason = reason
        self.username = username


class AccountBanned(SecurityRejection, Forbidden):
    """403: the account is banned."""

    reason = "banned"

    def __init__(self, username: str) -> None:
        super().__init__("this account is banned")
        self.username = username


@dataclass(frozen=True)
class Account:
    """A user as tokens describe them."""

    user_id: uuid.UUID
    username: str
    roles: list[str]
    banned: bool

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Account:
        """Build from a ``users`` row (user_id, username, roles, banned)."""
        return cls(row["user_id"], row["username"], list(row["roles"]), row["banned"])


class Accounts:
    """Registers users and checks their passwords."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        passwords: Passwords,
        login_throttle: LoginThrottle,
        signup_throttle: SignupThrottle,
    ) -> None:
        self._pool = pool
        self._passwords = passwords
        self._login_throttle = login_throttle
        self._signup_throttle = signup_throttle

    async def register(self, username: str, password: str, address: str) -> Account:
        """Create an account; :class:`UsernameTaken` if the name exists in any case.

        Raises :class:`RegistrationThrottled` (429) before anything else is spent, and
        :class:`HasherBusy` (503) when registrations' share of the hashing workers is full.
        """
        # Every attempt is charged, a taken name too: probing names costs the same allowance.
        await self._signup_throttle.admit(username, address)
        # Cheap check first so a taken name costs no hash; the insert below still decides races.
        if await self._pool.fetchval(
            "SELECT 1 FROM users WHERE lower(username) = lower($1)", username
        ):
            raise UsernameTaken(username)
        password_hash = await self._passwords.hash_new(password)
        row = await self._pool.fetchrow(
            """INSERT INTO users (user_id, username, password_hash) VALUES ($1, $2, $3)
               ON CONFLICT ((lower(username))) DO NOTHING
               RETURNING user_id, username, roles, banned""",
            uuid.uuid4(),
            username,
            password_hash,
        )
        if row is None:
            raise UsernameTaken(username)
        log.info("user_registered", user_id=str(row["user_id"]), username=username)
        return Account.from_row(row)

    async def authenticate(self, username: str, password: str, address: str) -> Account:
        """The account whose password this is, after the throttle admitted the attempt.

        Raises :class:`LoginThrottled` (429), :class:`InvalidCredentials` (401) or
        :class:`AccountBanned` (403, only once the password was right).
        """
        attempt = await self._login_throttle.admit(username, address)
        # The slow-down comes before the check: a client that gives up early learns nothing.
        if attempt.delay_s:
            await asyncio.sleep(attempt.delay_s)
        row = await self._pool.fetchrow(
            """SELECT user_id, username, password_hash, roles, banned
               FROM users WHERE lower(username) = lower($1)""",
            username,
        )
        if row is None:
            # Same work as for a real user, so response time does not reveal who exists.
            await self._passwords.verify_dummy(password)
            raise InvalidCredentials("unknown_user", username)
        if not await self._passwords.verify(row["password_hash"], password):
            raise InvalidCredentials("wrong_password", username)
        account = Account.from_row(row)
        if account.banned:
            raise AccountBanned(account.username)
        await self._login_throttle.succeeded(attempt)
        if self._passwords.needs_rehash(row["password_hash"]):
            await self._rehash(account.user_id, row["password_hash"], password)
        return account

    async def _rehash(self, user_id: uuid.UUID, old_hash: str, password: str) -> None:
        # Hashing parameters were raised since this hash was made; upgrade it while we know
        # the password. Compare-and-set: a concurrent password change wins.
        new_hash = await self._passwords.hash(password)
        await self._pool.execute(
            "UPDATE users SET password_hash = $1 WHERE user_id = $2 AND password_hash = $3",
            new_hash,
            user_id,
            old_hash,
        )
        log.info("password_rehashed", user_id=str(user_id))
