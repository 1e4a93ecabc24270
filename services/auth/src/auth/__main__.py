"""``auth``: serve the auth service, or run an operator command.

    auth [serve]            start the HTTP service (port 8081)
    auth rotate-keys        add a signing key (published now, signs after key_publish_ahead_s)
    auth ban NAME           ban a user and end their sessions
    auth unban NAME         lift a ban
    auth delete-user NAME   delete a user, their sessions and tokens
    auth flags [--all]      list open anomaly flags (--all: cleared and confirmed ones too)
    auth clear-flag ID      close a flag as a false alarm
    auth confirm-flag ID    confirm a flag: the player is banned (as ``auth ban``)

Commands print one JSON document on stdout; exit status 1 when the user or flag does not
exist, or the flag was already reviewed the other way.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from auth.admin import Admin, AdminResult, FlagAlreadyReviewed, UnknownFlag, UnknownUser
from auth.app import create_app
from auth.keys import describe, rotate_keys
from auth.revocations import Revocations
from auth.settings import Settings
from common.cli import add_version
from common.logs import configure_logging
from common.postgres import create_pool
from common.redis_client import create_redis
from common.runner import serve


def _parser() -> argparse.ArgumentParser:
    parser = add_version(
        argparse.ArgumentParser(prog="auth", description="Scoreboard auth service"), "auth"
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="start the HTTP service (the default)")
    commands.add_parser("rotate-keys", help="add a new signing key; old ones retire later")
    for name, text in [
        ("ban", "ban a user and end their sessions"),
        ("unban", "lift a user's ban"),
        ("delete-user", "delete a user with their sessions"),
    ]:
        commands.add_parser(name, help=text).add_argument("username")
    listing = commands.add_parser("flags", help="list open anomaly flags, newest first")
    listing.add_argument("--all", action="store_true", help="cleared and confirmed ones too")
    for name, text in [
        ("clear-flag", "close a flag as a false alarm"),
        ("confirm-flag", "confirm a flag and ban its player"),
    ]:
        review = commands.add_parser(name, help=text)
        review.add_argument("flag_id", type=uuid.UUID)
        review.add_argument("--by", default=_operator(), help="who reviews (default: $USER)")
    return parser


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return "operator"


async def _rotate(settings: Settings) -> dict[str, Any]:
    pool = await create_pool(settings)
    try:
        return describe(await rotate_keys(pool, settings))
    finally:
        await pool.close()


def _result(result: AdminResult) -> dict[str, Any]:
    return {
        "user_id": str(result.user_id),
        "username": result.username,
        "sessions_revoked": result.sessions_revoked,
    }


def _account_action(
    action: Callable[[Admin], Awaitable[AdminResult]],
) -> Callable[[Admin], Awaitable[Any]]:
    async def run(admin: Admin) -> dict[str, Any]:
        return _result(await action(admin))

    return run


def _flag_action(args: argparse.Namespace) -> Callable[[Admin], Awaitable[Any]]:
    async def listing(admin: Admin) -> list[dict[str, Any]]:
        return [f.to_json() for f in await admin.flags(None if args.all else "open")]

    async def clear(admin: Admin) -> dict[str, Any]:
        return (await admin.clear_flag(args.flag_id, args.by)).to_json()

    async def confirm(admin: Admin) -> dict[str, Any]:
        flag, ban = await admin.confirm_flag(args.flag_id, args.by)
        return {**flag.to_json(), "ban": _result(ban)}

    return {"flags": listing, "clear-flag": clear, "confirm-flag": confirm}[args.command]


async def _admin(settings: Settings, action: Callable[[Admin], Awaitable[Any]]) -> Any:
    pool = await create_pool(settings)
    redis = create_redis(settings)
    try:
        revocations = Revocations(redis, settings.redis_prefix, settings.revocation_ttl_s)
        return await action(Admin(pool, revocations))
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
        elif command in ("flags", "clear-flag", "confirm-flag"):
            out = asyncio.run(_admin(settings, _flag_action(args)))
        else:
            name: str = args.username
            actions: dict[str, Callable[[Admin], Awaitable[AdminResult]]] = {
                "ban": lambda admin: admin.ban(name),
                "unban": lambda admin: admin.unban(name),
                "delete-user": lambda admin: admin.delete(name),
            }
            out = asyncio.run(_admin(settings, _account_action(actions[command])))
    except UnknownUser as exc:
        print(f"auth {command}: no user named {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except UnknownFlag as exc:
        print(f"auth {command}: no flag {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except FlagAlreadyReviewed as exc:
        print(f"auth {command}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(json.dumps(out))


if __name__ == "__main__":
    main()
