"""Operator commands for the boards the score service counts on (``score boards ...``).

The definitions are rows of ``boards`` (common.boards); every replica reloads them in the first
batch after the table's revision moved, so a new board counts from that batch on, on every
replica, without a restart. Earlier actions are not counted retroactively.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg

from common.boards import DEFAULT_BOARD, load_catalog, read_definitions, save_definitions


class CannotRetireDefault(Exception):
    """The default board serves ``/api/scoreboard/*``: it cannot be retired."""


class UnknownBoard(Exception):
    """No board with this id."""


async def load(pool: asyncpg.Pool, path: Path) -> dict[str, Any]:
    """Create or replace the boards defined in the TOML file ``path`` (all or none)."""
    definitions = read_definitions(path)
    async with pool.acquire() as conn:
        written = await save_definitions(conn, definitions)
    return {"written": written, "boards": [d.board_id for d in definitions]}


async def listing(pool: asyncpg.Pool) -> dict[str, Any]:
    """Every active board's definition and the catalog revision."""
    catalog = await load_catalog(pool)
    return {
        "revision": catalog.revision,
        "boards": [b.definition.model_dump(mode="json") for b in catalog.boards.values()],
    }


async def retire(pool: asyncpg.Pool, board_id: str) -> dict[str, Any]:
    """Stop counting on ``board_id``; its periods stay readable in PostgreSQL."""
    if board_id == DEFAULT_BOARD:
        raise CannotRetireDefault(board_id)
    done = await pool.fetchval(
        """UPDATE boards SET retired = true, revision = nextval('boards_revision_seq'),
                  updated_at = now()
           WHERE board_id = $1 RETURNING board_id""",
        board_id,
    )
    if done is None:
        raise UnknownBoard(board_id)
    return {"retired": board_id}
