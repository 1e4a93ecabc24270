"""Who may do what in PostgreSQL: a login role per service with only the grants its queries need.

The owner role (``scoreboard``, the database's owner) runs the migrations and is the only one
that may change the schema; the services log in as ``scoreboard_<service>`` and can read and
write just their rows of the tables below (no DDL: they own nothing, and PostgreSQL 15 lets
nobody else create in ``public``). ``scoreboard-migrate`` applies :data:`GRANTS` after every
migration run (GRANT is idempotent), so a role created after the schema still gets its rights
and a table added by a migration gets them once it is listed here.

Who creates the roles: scripts/infra.py locally (development passwords), the compose and dev
overlay's PostgreSQL init script, a DBA in production (docs/operations.md#postgresql-roles).
"""

from __future__ import annotations

from typing import Final

import asyncpg
import structlog

log = structlog.get_logger(__name__)

ROLE_PREFIX: Final = "scoreboard_"
SERVICES: Final = ("auth", "score", "broadcaster")
# Every column of users but the password hash: what the score service and the broadcaster read.
_USER_PUBLIC: Final = "SELECT (user_id, username, roles, banned, created_at)"

# table -> privileges, per service. A table missing from the database is skipped (a migration
# not applied yet); a new table nobody is granted is caught by tests/test_db_access.
GRANTS: Final[dict[str, dict[str, str]]] = {
    "auth": {
        "users": "SELECT, INSERT, UPDATE, DELETE",
        "login_sessions": "SELECT, INSERT, UPDATE, DELETE",
        "refresh_tokens": "SELECT, INSERT, UPDATE, DELETE",
        "signing_keys": "SELECT, INSERT, UPDATE, DELETE",
        "removed_users": "SELECT, INSERT",  # delete-user records the removal (common.removals)
        # delete-user locks the user's score row (FOR UPDATE needs UPDATE on some column)
        # to read its version; a timestamp is the least it can do with that.
        "scores": "SELECT, UPDATE (updated_at)",
        "player_flags": "SELECT, UPDATE",  # review-flag
        "board_hold_steps": "SELECT, UPDATE",  # clear-flag releases a hold (0007)
        "moderation_events": "SELECT, INSERT",  # ban, unban, delete-user (common.moderation)
    },
    "score": {
        "users": _USER_PUBLIC,
        "scores": "SELECT, INSERT, UPDATE",
        "actions": "SELECT, INSERT",
        "outbox": "SELECT, INSERT, UPDATE, DELETE",
        "player_flags": "SELECT, INSERT, UPDATE",
        "board_hold_steps": "SELECT, UPDATE",  # a flag raised under quarantine holds (0007)
        "boards": "SELECT, INSERT, UPDATE",
        "board_scores": "SELECT, INSERT, UPDATE, DELETE",
        "closed_periods": "SELECT, INSERT, UPDATE",  # the period closer (score/closer.py)
        "moderation_events": "SELECT, UPDATE (published_at)",  # score/moderation.py
    },
    "broadcaster": {
        "users": "SELECT (user_id, username, banned)",  # banned players are off the boards
        "scores": "SELECT",
        "removed_users": "SELECT",
        "boards": "SELECT",
        "board_scores": "SELECT",
        "board_entries": "SELECT",  # a view over board_scores and users
        "board_holds": "SELECT",  # a view over player_flags: what the board holds (0007)
        "board_hold_steps": "SELECT",
        "moderation_events": "SELECT",  # bans and unbans on the live boards
    },
}
# Sequences behind serial columns the service inserts into (outbox.id, boards' revisions).
SEQUENCE_USERS: Final = ("score",)


def role(service: str) -> str:
    """The login role of ``service``."""
    return f"{ROLE_PREFIX}{service}"


def local_db_password(service: str) -> str:
    """The development password of ``service``'s role (scripts/infra.py creates the roles with
    it; the services' default DSNs use it). Worthless anywhere else."""
    return f"{service}-local-dev-password"


async def apply_grants(conn: asyncpg.Connection) -> list[str]:
    """Grant each existing service role its privileges on the tables that exist; returns the
    roles granted. Run as the owner (who may grant on what it owns)."""
    existing = {
        r["rolname"]
        for r in await conn.fetch(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY($1::text[])",
            [role(s) for s in SERVICES],
        )
    }
    tables = {
        r["name"]
        for r in await conn.fetch(
            """SELECT tablename AS name FROM pg_tables WHERE schemaname = 'public'
               UNION SELECT viewname FROM pg_views WHERE schemaname = 'public'"""
        )
    }
    granted = []
    async with conn.transaction():
        # PostgreSQL < 15 lets every role create in public; 15 does not. Say it either way.
        await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        for service in SERVICES:
            name = role(service)
            if name not in existing:
                log.warning("db_role_missing", role=name, hint="create it (operations.md)")
                continue
            await conn.execute(f'GRANT USAGE ON SCHEMA public TO "{name}"')
            for table, privileges in GRANTS[service].items():
                if table in tables:
                    await conn.execute(f'GRANT {privileges} ON "{table}" TO "{name}"')
            if service in SEQUENCE_USERS:
                await conn.execute(
                    f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "{name}"'
                )
            granted.append(name)
    return granted
