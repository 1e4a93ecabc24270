"""Forward-only, versioned SQL migrations (``common/migrations/NNNN_name.sql``).

Hand-written because it is forty lines: each file runs once, in its own transaction, under an
advisory lock, so two runs never race. Only the owner role runs them (``make migrate``, the
compose ``migrate`` one-shot, the k8s migration Job, the test harness): the services log in as
roles that cannot change the schema, and each run grants them their rights again
(common.db_access).
"""

from __future__ import annotations

import asyncio
import re
from importlib import resources

import asyncpg
import structlog

from common.cli import parse_plain
from common.db_access import apply_grants
from common.logs import configure_logging
from common.settings import CommonSettings

log = structlog.get_logger(__name__)

_LOCK_ID = 0x5C0_4EB0A2D
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def available() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) for every migration shipped, in order."""
    found = []
    for entry in resources.files("common.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    found.sort()
    versions = [v for v, _, _ in found]
    if len(versions) != len(set(versions)):
        raise RuntimeError(f"two migrations share a version: {versions}")
    return found


async def apply_migrations(conn: asyncpg.Connection) -> list[str]:
    """Apply what is missing; returns the file names applied now."""
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for version, name, sql in available():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            log.info("migration_applied", migration=name)
            applied.append(name)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)


async def migrate(dsn: str) -> list[str]:
    """Connect (as the owner), apply the missing migrations and the services' grants."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        applied = await apply_migrations(conn)
        await apply_grants(conn)
        return applied
    finally:
        await conn.close()


def main() -> None:
    """``scoreboard-migrate``: bring the database in ``SCOREBOARD_POSTGRES_DSN`` up to date."""
    parse_plain(
        "scoreboard-migrate",
        "apply the missing schema migrations and the services' grants, as the owner role",
    )
    settings = CommonSettings.load()
    configure_logging("migrate", settings.log_level, json=False)
    applied = asyncio.run(migrate(settings.postgres_dsn))
    print(f"{len(applied)} migration(s) applied" + (f": {', '.join(applied)}" if applied else ""))


if __name__ == "__main__":
    main()
