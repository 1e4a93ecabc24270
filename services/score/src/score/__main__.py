"""``score``: serve the score service, or run an operator command.

    score [serve]               consume commands until SIGTERM (settings: ``serve --help``)
    score boards load FILE      create or replace the boards of a TOML file (docs/operations.md)
    score boards list           the active boards
    score boards retire ID      stop counting on a board (its periods stay readable)

Commands print one JSON object on stdout; exit status 1 on a bad file or an unknown board.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from pydantic import ValidationError

from common.cli import add_version
from common.postgres import create_pool
from common.runner import serve
from score import board_admin
from score.app import create_app
from score.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = add_version(
        argparse.ArgumentParser(prog="score", description="Scoreboard score service"), "score"
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="consume commands until SIGTERM (the default)")
    boards = commands.add_parser("boards", help="define the leaderboards").add_subparsers(
        dest="action", required=True
    )
    boards.add_parser("load", help="create or replace the boards of a TOML file").add_argument(
        "file", type=Path
    )
    boards.add_parser("list", help="the active boards")
    boards.add_parser("retire", help="stop counting on a board").add_argument("board_id")
    return parser


async def _with_pool(action: Callable[[asyncpg.Pool], Awaitable[dict[str, Any]]]) -> Any:
    pool = await create_pool(Settings.load())
    try:
        return await action(pool)
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the command."""
    args, rest = _parser().parse_known_args(argv)
    if args.command in (None, "serve"):
        serve(Settings, create_app, argv=rest)
        return
    actions: dict[str, Callable[[asyncpg.Pool], Awaitable[dict[str, Any]]]] = {
        "load": lambda pool: board_admin.load(pool, args.file),
        "list": board_admin.listing,
        "retire": lambda pool: board_admin.retire(pool, args.board_id),
    }
    try:
        out = asyncio.run(_with_pool(actions[args.action]))
    except (ValidationError, ValueError, OSError) as exc:
        print(f"score boards {args.action}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except (board_admin.UnknownBoard, board_admin.CannotRetireDefault) as exc:
        print(f"score boards {args.action}: cannot retire board {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(json.dumps(out))


if __name__ == "__main__":
    main()
