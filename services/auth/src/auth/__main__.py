"""``auth``: serve the auth service, or run an operator command.

    auth [serve]            start the HTTP service (port 8081)
    auth rotate-keys        add a signing key (published now, signs after key_publish_ahead_s)
    auth ban NAME           ban a user and end their sessions
    auth unban NAME         lift a ban
    auth delete-user NAME   delete a user, their sessions and tokens

Commands print one JSON object on stdout; exit status 1 when the user does not exist.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from auth.admin import Admin, AdminResult, UnknownUser
from auth.app import create_app
from auth.keys import describe, rotate_keys
from auth.revocations import Revocations
from auth.settings import Settings
from common.logs import configure_logging
from common.postgres import create_pool
from common.redis_client import create_redis
from common.runner import serve


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="auth", description="Scoreboard auth service")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="start the HTTP service (the default)")
    commands.add_parser("rotate-keys", help="add a new signing key; old ones retire later")
    for name, text in [
        ("ban", "ban a user and end their sessions"),
        ("unban", "lift a user's ban"),
        ("delete-user", "delete a user with their sessions"),
    ]:
        commands.add_parser(name, help=text).add_argument("username")
    return parser


async def _rotate(settings: Settings) -> dict[str, Any]:
    pool = await create_pool(settings)
    try:
        return describe(await rotate_keys(pool, settings))
    finally:
        await pool.close()


async def _admin(
    settings: Settings, action: Callable[[Admin], Awaitable[AdminResult]]
) -> dict[str, Any]:
    pool = await create_pool(settings)
    redis = create_redis(settings)
    try:
        revocations = Revocations(redis, settings.redis_prefix, settings.revocation_ttl_s)
        result = await action(Admin(pool, revocations))
        return {
            "user_id": str(result.user_id),
            "username": result.username,
            "sessions_revoked": result.sessions_revoked,
        }
    finally:
        await redis.aclose()
        await pool.close()


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the command."""
    args = _parser().parse_args(argv)
    command = args.command or "serve"
    if command == "serve":
        serve(Settings, create_app, argv=[])  # the arguments are parsed already
        return
    settings = Settings.load()
    # Operator commands keep stdout for their one JSON result; their log (an audit trail of
    # what was done) goes to stderr.
    configure_logging(f"{settings.service_name}-cli", settings.log_level, json=settings.log_json)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)
    try:
        if command == "rotate-keys":
            out = asyncio.run(_rotate(settings))
        else:
            name: str = args.username
            actions: dict[str, Callable[[Admin], Awaitable[AdminResult]]] = {
                "ban": lambda admin: admin.ban(name),
                "unban": lambda admin: admin.unban(name),
                "delete-user": lambda admin: admin.delete(name),
            }
            out = asyncio.run(_admin(settings, actions[command]))
    except UnknownUser as exc:
        print(f"auth {command}: no user named {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(json.dumps(out))


if __name__ == "__main__":
    main()
