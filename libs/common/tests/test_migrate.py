"""Migrations apply once, in order, and the schema has what the reads need."""

from __future__ import annotations

import asyncpg

from common.migrate import apply_migrations, available


async def test_migrations_are_applied_once(pg: asyncpg.Connection) -> None:
    # The session fixture already migrated this database: a second run applies nothing.
    assert await apply_migrations(pg) == []
    versions = [r["version"] for r in await pg.fetch("SELECT version FROM schema_migrations")]
    assert versions == sorted(v for v, _, _ in available())


async def test_rank_index_exists(pg: asyncpg.Connection) -> None:
    indexdef = await pg.fetchval(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'scores_rank_idx'"
    )
    assert "score DESC" in indexdef


async def test_action_id_is_unique(pg: asyncpg.Connection) -> None:
    row = await pg.fetchrow(
        """SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
           WHERE c.relname = 'actions' AND i.indisprimary"""
    )
    assert row is not None
